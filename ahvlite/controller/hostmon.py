"""The leader's view of the hosts: link state and a VM state cache.

One :class:`~ahvlite.virt.hostconn.HostConnection` per host (keepalive, close callback,
reconnect): the links HA reads. Link changes and domain lifecycle events update the
cache at once; every ``interval_s`` the maintenance state (``closed``: the cluster state
``host maintenance`` writes) is read again, and each host's VM list is refreshed from
the newest stats its own controller published (``latest``; the leader polls no host
for stats, see ``hoststats``). Host state goes to ``hosts/NAME`` through the fence: a
deposed leader's monitor cannot publish.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ahvlite.clock import SYSTEM
from ahvlite.controller.coord.api import Coordinator, NotLeader, Put
from ahvlite.controller.periodic import Periodic
from ahvlite.errors import AhvliteError
from ahvlite.sched.stats import HostStats
from ahvlite.virt.hostconn import DomainEvent, LinkState, StateChange

log = logging.getLogger(__name__)

EVENT_STATE = {"started": "running", "resumed": "running", "suspended": "paused",
               "stopped": "shutoff", "shutdown": "shutoff", "crashed": "crashed",
               "pmsuspended": "suspended"}


class Link(Protocol):
    host: str
    state: LinkState
    conn: Any

    def on_state(self, fn: Callable[[StateChange], None]) -> None: ...
    def on_domain_event(self, fn: Callable[[DomainEvent], None]) -> None: ...
    def start(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class HostRecord:
    name: str
    state: str = "connecting"  # connected, disconnected, maintenance
    since: float = 0.0
    reason: str = ""
    vms: dict[str, str] | None = None

    def to_json(self) -> bytes:
        return json.dumps({"name": self.name, "state": self.state, "since": self.since,
                           "reason": self.reason, "vms": self.vms or {}}).encode()


def apply_event(vms: dict[str, str], event: str, domain: str) -> None:
    """Lifecycle event -> VM state cache (pure)."""
    if event == "undefined":
        vms.pop(domain, None)
    elif event == "defined":
        vms.setdefault(domain, "shutoff")
    elif event in EVENT_STATE:
        vms[domain] = EVENT_STATE[event]


class HostMonitor:
    def __init__(self, coord: Coordinator, links: list[Link], *, interval_s: float = 10.0,
                 clock: Callable[[], float] = SYSTEM.time,
                 latest: Callable[[str], HostStats | None] = lambda _h: None,
                 closed: Callable[[], set[str]] = set) -> None:
        self.coord = coord
        self.closed = closed  # hosts in maintenance (the cluster state the CLI writes)
        # The last link state, kept under maintenance too (what the host shows after it).
        self._link_state: dict[str, str] = {link.host: "connecting" for link in links}
        self.links = {link.host: link for link in links}
        self.interval_s = interval_s
        self.clock = clock
        self.latest = latest  # the newest stats the host's own controller published
        self.hosts = {h: HostRecord(h, since=clock(), vms={}) for h in self.links}
        self._applied: dict[str, float] = {}  # host -> `at` of the stats record applied
        self._mu = threading.Lock()
        self._stop = threading.Event()  # set also when we lose the lead
        self.loop = Periodic("hostmon", self.collect_once, interval_s, stop=self._stop)

    def start(self) -> None:
        for link in self.links.values():
            link.on_state(self._on_link)
            link.on_domain_event(self._on_event)
            link.start()
        self.loop.start()

    def stop(self) -> None:
        self._stop.set()
        for link in self.links.values():
            link.close()
        self.loop.stop(timeout_s=5)

    def _maintenance(self, host: str) -> bool:
        try:
            return host in self.closed()
        except AhvliteError as exc:
            log.warning("maintenance state: %s", exc.message)
            return False

    def _publish(self, host: str) -> None:
        with self._mu:
            rec = self.hosts[host]
            data = rec.to_json()
        try:
            self.coord.fenced([Put(f"hosts/{host}", data)])
        except NotLeader:
            self._stop.set()
        except AhvliteError as exc:
            log.warning("publish host %s: %s", host, exc.message)

    def _on_link(self, change: StateChange) -> None:
        if change.state == LinkState.CLOSED:
            return
        with self._mu:
            rec = self.hosts[change.host]
            self._link_state[change.host] = change.state.value
            state = ("maintenance" if self._maintenance(change.host)
                     else change.state.value)
            if state != rec.state:
                rec.state, rec.since = state, self.clock()
            rec.reason = change.reason
        self._publish(change.host)

    def _refresh_maintenance(self) -> None:
        """Maintenance is entered and left without any link change: look every round."""
        try:
            closed = self.closed()
        except AhvliteError as exc:
            log.warning("maintenance state: %s", exc.message)
            return
        for host, rec in self.hosts.items():
            with self._mu:
                state = "maintenance" if host in closed else self._link_state[host]
                changed = state != rec.state
                if changed:
                    rec.state, rec.since = state, self.clock()
            if changed:
                self._publish(host)

    def _on_event(self, ev: DomainEvent) -> None:
        with self._mu:
            apply_event(self.hosts[ev.host].vms or {}, ev.event, ev.domain)
        self._publish(ev.host)

    def collect_once(self) -> None:
        """Maintenance state again; each connected host's VM list from its newest
        published stats (events may have been missed while its link was down)."""
        self._refresh_maintenance()
        for host, link in self.links.items():
            if link.conn is None:
                continue
            try:
                rec = self.latest(host)
            except AhvliteError as exc:
                log.warning("stats of %s: %s", host, exc.message)
                continue
            if rec is None or rec.at <= self._applied.get(host, 0.0):
                continue
            self._applied[host] = rec.at
            with self._mu:
                self.hosts[host].vms = {v.name: v.state for v in rec.vms}
            self._publish(host)



def read_hosts(coord: Coordinator) -> list[dict[str, Any]]:
    return sorted((json.loads(v.value) for v in coord.children("hosts").values()),
                  key=lambda r: r["name"])
