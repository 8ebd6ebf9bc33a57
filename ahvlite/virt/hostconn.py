"""A long-lived libvirt connection to one host that notices loss and comes back.

libvirt keepalive detects a silent host (interval x count), the close callback marks
the host disconnected the moment the connection drops, and a reconnect thread retries
with backoff and jitter. Domain lifecycle events are re-subscribed after every
reconnect, so subscribers see one continuous stream per host.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import libvirt

from ahvlite.errors import AhvliteError
from ahvlite.virt.backoff import Backoff
from ahvlite.virt.conn import open_connection

log = logging.getLogger(__name__)

LIFECYCLE = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined", libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started", libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed", libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED:
    "pmsuspended", libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}


class LinkState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@dataclass(frozen=True)
class DomainEvent:
    host: str
    domain: str
    event: str
    detail: int
    at_monotonic: float


@dataclass(frozen=True)
class StateChange:
    host: str
    state: LinkState
    reason: str
    at_monotonic: float


class HostConnection:
    """One host's connection: state, keepalive, close callback, reconnect, events."""

    def __init__(self, host: str, uri: str, *, keepalive_interval_s: int = 5,
                 keepalive_count: int = 3, connect_timeout_s: float = 10,
                 backoff: Backoff | None = None, insecure_tcp: bool = False) -> None:
        self.host = host
        self.uri = uri
        self.keepalive_interval_s = keepalive_interval_s
        self.keepalive_count = keepalive_count
        self.connect_timeout_s = connect_timeout_s
        self.backoff = backoff or Backoff()
        self.insecure_tcp = insecure_tcp
        self.state = LinkState.CONNECTING
        self.last_error: str | None = None
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._state_subs: list[Callable[[StateChange], None]] = []
        self._event_subs: list[Callable[[DomainEvent], None]] = []

    # -- subscriptions ----------------------------------------------------------

    def on_state(self, fn: Callable[[StateChange], None]) -> None:
        self._state_subs.append(fn)

    def on_domain_event(self, fn: Callable[[DomainEvent], None]) -> None:
        self._event_subs.append(fn)

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and keep connected until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, name=f"hostconn-{self.host}",
                                        daemon=True)
        self._thread.start()

    def wait_connected(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.state == LinkState.CONNECTED:
                return True
            time.sleep(0.05)
        return self.state == LinkState.CONNECTED

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.unregisterCloseCallback()
                conn.close()
            except libvirt.libvirtError:
                pass
        self._set_state(LinkState.CLOSED, "closed by the client")

    @property
    def conn(self) -> libvirt.virConnect | None:
        return self._conn if self.state == LinkState.CONNECTED else None

    # -- internals --------------------------------------------------------------

    def _set_state(self, state: LinkState, reason: str) -> None:
        if state == self.state and state != LinkState.CONNECTED:
            return
        self.state = state
        change = StateChange(self.host, state, reason, time.monotonic())
        for fn in list(self._state_subs):
            try:
                fn(change)
            except Exception:  # a subscriber's bug must not kill the connection thread
                log.exception("state subscriber failed")

    def _run(self) -> None:
        delays = self.backoff.delays()
        while not self._stop:
            if self._conn is None:
                try:
                    self._connect()
                    delays = self.backoff.delays()  # a success resets the backoff
                except AhvliteError as exc:
                    self.last_error = exc.message
                    self._set_state(LinkState.DISCONNECTED, exc.message)
                    self._wake.wait(next(delays))
                    self._wake.clear()
                    continue
            self._wake.wait()
            self._wake.clear()

    def _connect(self) -> None:
        conn = open_connection(self.uri, keepalive_interval_s=self.keepalive_interval_s,
                               keepalive_count=self.keepalive_count,
                               timeout_s=self.connect_timeout_s,
                               insecure_tcp=self.insecure_tcp)
        conn.registerCloseCallback(self._closed, None)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                    self._lifecycle, None)
        with self._lock:
            self._conn = conn
        self.last_error = None
        self._set_state(LinkState.CONNECTED, "connected")

    def _closed(self, _conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        # Runs on the event-loop thread: record and hand reconnecting to our thread.
        why = {libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "I/O error",
               libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "the host closed the connection",
               libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timed out",
               libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by the client",
               }.get(reason, f"reason {reason}")
        with self._lock:
            self._conn = None
        if not self._stop:
            self._set_state(LinkState.DISCONNECTED, why)
            self._wake.set()

    def _lifecycle(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int,
                   detail: int, _opaque: object) -> None:
        ev = DomainEvent(self.host, dom.name(), LIFECYCLE.get(event, str(event)), detail,
                         time.monotonic())
        for fn in list(self._event_subs):
            try:
                fn(ev)
            except Exception:
                log.exception("event subscriber failed")
