"""Connections to hosts kept open between calls, each lent to one caller at a time.

A controller answers many reads and runs many task steps; opening a TLS connection to
every host for each of them costs more than the work. The pool keeps idle connections
(libvirt's keepalive watches them) and lends each to ONE caller at a time: two threads
on a connection that breaks mid-call crashed libvirt's client in the lab, so sharing a
connection between concurrent callers is never done. A connection that is no longer
alive is dropped, never reused; one returned after an error is closed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ahvlite.clock import SYSTEM
from ahvlite.virt.conn import Connection, close_quietly, is_alive, open_connection

IDLE_S = 300.0  # an idle connection older than this is closed rather than lent
PER_URI = 8  # idle connections kept per host


class ConnectionPool:
    def __init__(self, *, idle_s: float = IDLE_S, per_uri: int = PER_URI) -> None:
        self.idle_s = idle_s
        self.per_uri = per_uri
        self._idle: dict[str, list[tuple[float, Connection]]] = {}
        self._mu = threading.Lock()
        self.opened = 0  # connections opened, for tests and benchmarks
        # Per URI: connections opened, and leases (each caller that took one, opened or
        # idle): how often operations went to a host, for tests and benchmarks.
        self.counts: dict[str, dict[str, int]] = {}

    def _take(self, uri: str) -> Connection | None:
        now = SYSTEM.monotonic()
        while True:
            with self._mu:
                stack = self._idle.get(uri, [])
                if not stack:
                    return None
                since, conn = stack.pop()
            if now - since <= self.idle_s and is_alive(conn):
                return conn
            close_quietly(conn)

    def acquire(self, uri: str, *, timeout_s: float = 10) -> Connection:
        """A connection to ``uri`` lent to the caller alone until ``release``."""
        conn = self._take(uri)
        opened = conn is None
        if conn is None:
            conn = open_connection(uri, timeout_s=timeout_s)
        with self._mu:
            counts = self.counts.setdefault(uri, {"opened": 0, "leased": 0})
            counts["leased"] += 1
            if opened:
                self.opened += 1
                counts["opened"] += 1
        return conn

    def counted(self) -> dict[str, dict[str, int]]:
        """A copy of :attr:`counts`."""
        with self._mu:
            return {uri: dict(c) for uri, c in self.counts.items()}

    def release(self, uri: str, conn: Connection, *, ok: bool = True) -> None:
        """Give ``conn`` back: kept when the caller finished cleanly and it is alive,
        closed otherwise (an error may have left it mid-call)."""
        if ok and is_alive(conn):
            with self._mu:
                stack = self._idle.setdefault(uri, [])
                if len(stack) < self.per_uri:
                    stack.append((SYSTEM.monotonic(), conn))
                    return
        close_quietly(conn)

    @contextmanager
    def lease(self, uri: str, *, timeout_s: float = 10) -> Iterator[Connection]:
        conn = self.acquire(uri, timeout_s=timeout_s)
        ok = False
        try:
            yield conn
            ok = True
        finally:
            self.release(uri, conn, ok=ok)

    def close(self) -> None:
        with self._mu:
            idle, self._idle = self._idle, {}
        for stack in idle.values():
            for _, conn in stack:
                close_quietly(conn)
