"""What the HA leader does to hosts, through libvirt (the production :class:`HostOps`).

The service reads the host monitor's link only as a signal (up, and ``isAlive``). Its
own calls go through its own connection per host, on that host's own worker thread,
with a time limit: on a host cut off mid-call, ``listAllDomains`` was seen never to
return, and a second thread on the same broken connection crashed libvirt's client
(segfault). A stuck host counts as unreachable; its stuck connection is abandoned,
never closed under the pending call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol, TypeVar

from ahvlite.clock import SYSTEM, Clock
from ahvlite.controller.ha.records import StoredVm
from ahvlite.errors import AhvliteError, OperationTimeout
from ahvlite.virt import facts, failover, guest
from ahvlite.virt.conn import close_quietly, open_connection
from ahvlite.virt.conn import is_alive as conn_alive
from ahvlite.virt.failover import DomainFacts

log = logging.getLogger(__name__)
T = TypeVar("T")

# (connection, host, record, epoch) -> domain XML rendered by the designer for that host
Render = Callable[[Any, str, StoredVm, int], str]


class HostOps(Protocol):
    """The HA leader's view of and hands on the hosts (a simulator provides its own)."""

    def reachable(self, host: str) -> bool: ...
    def facts(self, host: str) -> list[DomainFacts]: ...
    def capacity(self, host: str) -> tuple[int, int]:
        """(total, free) MiB, free meaning not reserved by running VMs."""
        ...
    def start(self, host: str, vm: StoredVm, epoch: int) -> None:
        """Render ``vm`` from its spec as ``epoch`` on ``host``, define and start it."""
        ...
    def destroy(self, host: str, name: str) -> bool: ...
    def remove_stale(self, host: str, name: str, uuid: str) -> bool: ...


class LibvirtHosts:
    """:class:`HostOps` over libvirt, one worker thread and connection per host."""

    def __init__(self, monitor: Any, render: Render, *, call_timeout_s: float = 10.0,
                 open_conn: Callable[[str], Any] | None = None, clock: Clock = SYSTEM) -> None:
        self.monitor = monitor  # HostMonitor: .links[host].conn and .uri
        self.render = render
        self.call_timeout_s = call_timeout_s
        self.clock = clock
        self.open_conn = open_conn or self._open_link
        self._own: dict[str, Any] = {}
        self._abandoned: list[Any] = []  # stuck connections: kept, never used or closed
        self._workers: dict[str, ThreadPoolExecutor] = {}
        self._busy_since: dict[str, float] = {}

    def _open_link(self, host: str) -> Any:
        uri = self.monitor.links[host].uri
        return open_connection(uri, keepalive_interval_s=2, keepalive_count=2, timeout_s=5)

    def close(self) -> None:
        for pool in self._workers.values():
            pool.shutdown(wait=False, cancel_futures=True)
        for host, conn in list(self._own.items()):
            if host not in self._busy_since:
                close_quietly(conn)
        self._own.clear()

    def _on(self, host: str, fn: Callable[..., T], *args: Any) -> T:
        if host in self._busy_since:
            raise OperationTimeout(f"host {host}: an earlier libvirt call has not returned")
        pool = self._workers.get(host)
        if pool is None:
            pool = self._workers[host] = ThreadPoolExecutor(1, thread_name_prefix=f"ha-{host}")
        self._busy_since[host] = self.clock.monotonic()
        future = pool.submit(fn, *args)
        future.add_done_callback(lambda _f: self._busy_since.pop(host, None))
        try:
            return future.result(timeout=self.call_timeout_s)
        except FutureTimeout:
            if host in self._own:
                self._abandoned.append(self._own.pop(host))
            raise OperationTimeout(f"host {host}: libvirt did not answer in "
                                   f"{self.call_timeout_s:g} s") from None

    def _conn(self, host: str) -> Any:
        link = self.monitor.links.get(host)
        busy = self._busy_since.get(host)
        if link is None or link.conn is None or (
                busy is not None and self.clock.monotonic() - busy > self.call_timeout_s):
            return None
        if not conn_alive(link.conn):
            return None
        own = self._own.get(host)
        if own is not None and busy is None and not conn_alive(own):
            self._abandoned.append(self._own.pop(host))
            own = None
        if own is None:
            try:
                own = self._own[host] = self.open_conn(host)
            except AhvliteError as exc:
                log.warning("ha: connecting to %s: %s", host, exc.message)
                return None
        return own

    def _need(self, host: str) -> Any:
        conn = self._conn(host)
        if conn is None:
            raise OperationTimeout(f"host {host} is not reachable")
        return conn

    def reachable(self, host: str) -> bool:
        return self._conn(host) is not None

    def facts(self, host: str) -> list[DomainFacts]:
        return self._on(host, failover.domain_facts, self._need(host))

    def capacity(self, host: str) -> tuple[int, int]:
        conn = self._need(host)
        total, _ = self._on(host, facts.memory_mib, conn)
        used = self._on(host, facts.reserved_memory_mib, conn)
        return total, total - used

    def start(self, host: str, vm: StoredVm, epoch: int) -> None:
        conn = self._need(host)
        xml = self._on(host, self.render, conn, host, vm, epoch)
        self._on(host, guest.define_and_start, conn, xml, vm.name)

    def destroy(self, host: str, name: str) -> bool:
        return self._on(host, guest.power_off, self._need(host), name)

    def remove_stale(self, host: str, name: str, uuid: str) -> bool:
        return self._on(host, guest.remove_stale, self._need(host), name, uuid)
