"""A long-lived libvirt connection to one host that notices loss and comes back.

libvirt keepalive detects a silent host (interval x count), the close callback marks
the host disconnected the moment the connection drops, and a reconnect thread retries
with backoff and jitter. Domain lifecycle events are re-subscribed after every
reconnect, so subscribers see one continuous stream per host.

The close callback alone is not enough: when keepalive expires inside an RPC call
that another thread is waiting on, libvirt closes the socket but never calls it (seen
in the lab: a partition with two callers left the link "connected" on a dead socket
for good). So the link's own thread also checks ``isAlive()`` (a local check, no
round trip) every ``check_interval_s``, and :attr:`HostConnection.conn` never hands
out a connection that is not alive. A lost connection is abandoned, not closed:
another thread may still be inside a call on it, and closing under a pending call
crashed libvirt's client. Subscribers are called from a dispatcher thread, never from
libvirt's event loop, so a slow subscriber cannot stall keepalive of every host.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import libvirt

from ahvlite.clock import SYSTEM, wait_until
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
                 backoff: Backoff | None = None,
                 check_interval_s: float | None = None) -> None:
        self.host = host
        self.uri = uri
        self.keepalive_interval_s = keepalive_interval_s
        self.keepalive_count = keepalive_count
        self.connect_timeout_s = connect_timeout_s
        self.backoff = backoff or Backoff()
        self.check_interval_s = check_interval_s or max(0.5, keepalive_interval_s / 2)
        self.state = LinkState.CONNECTING
        self.last_error: str | None = None
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._abandoned: list[libvirt.virConnect] = []  # lost; kept, never used or closed
        self._notes: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._dispatcher: threading.Thread | None = None
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
        self._dispatcher = threading.Thread(target=self._dispatch,
                                            name=f"hostconn-{self.host}-notify", daemon=True)
        self._dispatcher.start()
        self._thread.start()

    def wait_connected(self, timeout_s: float) -> bool:
        wait_until(lambda: self.state == LinkState.CONNECTED, timeout_s=timeout_s,
                   interval_s=0.05)
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
        self._notes.put(None)  # the dispatcher delivers what is queued, then ends
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join(timeout=5)  # callers see every notification before close returns

    @property
    def conn(self) -> libvirt.virConnect | None:
        """The live connection, or None while the host is not reachable."""
        conn = self._conn
        if conn is None or self.state != LinkState.CONNECTED:
            return None
        if not _alive(conn):
            self._wake.set()  # the link thread records the loss and reconnects
            return None
        return conn

    # -- internals --------------------------------------------------------------

    def _set_state(self, state: LinkState, reason: str) -> None:
        with self._lock:
            if state == self.state and state != LinkState.CONNECTED:
                return
            self.state = state
            change = StateChange(self.host, state, reason, SYSTEM.monotonic())
        self._notify(self._state_subs, change)

    def _notify(self, subs: list[Callable[..., None]], item: object) -> None:
        def deliver() -> None:
            for fn in list(subs):
                try:
                    fn(item)
                except Exception:  # a subscriber's bug must not stop the others
                    log.exception("subscriber of %s failed", self.host)

        if self._dispatcher is None:
            deliver()  # not started: no other thread to hand it to
        else:
            self._notes.put(deliver)

    def _dispatch(self) -> None:
        while (note := self._notes.get()) is not None:
            note()

    def _lost(self, conn: libvirt.virConnect, reason: str) -> None:
        """Record the loss of ``conn`` once, whoever notices it first."""
        with self._lock:
            if self._conn is not conn:
                return  # already recorded (close callback and liveness check both saw it)
            self._conn = None
            self._abandoned.append(conn)
        if not self._stop:
            self._set_state(LinkState.DISCONNECTED, reason)
            self._wake.set()

    def _run(self) -> None:
        delays = self.backoff.delays()
        while not self._stop:
            conn = self._conn
            if conn is not None and not _alive(conn):
                self._lost(conn, "connection lost (keepalive timed out or socket closed)")
                continue
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
            self._wake.wait(self.check_interval_s)
            self._wake.clear()

    def _connect(self) -> None:
        conn = open_connection(self.uri, keepalive_interval_s=self.keepalive_interval_s,
                               keepalive_count=self.keepalive_count,
                               timeout_s=self.connect_timeout_s)
        conn.registerCloseCallback(self._closed, conn)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                    self._lifecycle, None)
        with self._lock:
            self._conn = conn
        self.last_error = None
        self._set_state(LinkState.CONNECTED, "connected")

    def _closed(self, _conn: libvirt.virConnect, reason: int, opaque: object) -> None:
        # Runs on the event-loop thread: record and hand reconnecting to our thread.
        # ``opaque`` is the connection the callback was registered on (not a newer one).
        why = {libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "I/O error",
               libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "the host closed the connection",
               libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timed out",
               libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by the client",
               }.get(reason, f"reason {reason}")
        if isinstance(opaque, libvirt.virConnect):
            self._lost(opaque, why)

    def _lifecycle(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int,
                   detail: int, _opaque: object) -> None:
        ev = DomainEvent(self.host, dom.name(), LIFECYCLE.get(event, str(event)), detail,
                         SYSTEM.monotonic())
        self._notify(self._event_subs, ev)


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False
