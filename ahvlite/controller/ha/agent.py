"""The host agent: its own process on every host; keeps the host's protected VMs
running only while it holds its lease, and feeds the host's watchdog only then.

* Heartbeat: every ``heartbeat_s`` it writes ``agents/HOST`` through the store (a
  quorum write). Each acknowledged write extends the lease to ``lease_s`` after the
  moment the write was *sent*.
* Election evidence: while heartbeats fail, it asks every store member whether it
  serves (``srvr``). A majority saying "not serving" means no quorum exists: nobody can
  act against this host until the election ends, so the lease extends to ``lease_s``
  after that probe was sent. A member that merely accepts a connection proves nothing.
* Fence: without a lease it powers off every running protected VM (all at once, with a
  deadline), every tick, so a VM started late is caught too.
* Watchdog: armed once the host runs protected VMs; fed only while the agent holds its
  lease, or after it confirmed that no protected VM runs. A stalled, crashed or
  crash-looping agent stops feeding, and the watchdog resets the host.
* Restore: when the lease returns, a VM this agent fenced is started again only if its
  record still names this host with the same epoch and no restart is under way, and
  only after a compare-and-set of that record (the leader's restart intent and this
  restore cannot both win).
* Strays: a running copy whose record shows a newer epoch (HA restarted it elsewhere)
  is powered off: the copy without the lease goes.

The lease survives a restart of the agent process (``/run/ahvlite/agent-lease``, on
tmpfs: gone with a reboot), so an upgrade does not fence healthy VMs, and a restarted
agent never holds a lease longer than its predecessor earned. docs/ha.md has the proof
and the timings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ahvlite.clock import SYSTEM, Clock
from ahvlite.controller.coord.api import Coordinator
from ahvlite.controller.coord.ensemble import majority_electing
from ahvlite.controller.ha.lease import AgentLease
from ahvlite.controller.ha.records import (
    PREFIX,
    AgentDoc,
    BadRecord,
    StoredVm,
    agent_key,
    key,
)
from ahvlite.controller.periodic import Periodic
from ahvlite.errors import AhvliteError

log = logging.getLogger(__name__)

FENCE_DEADLINE_S = 2.0  # a destroy that takes longer is left to the watchdog
PROBE_S = 0.25  # how often members are asked while heartbeats fail
FEED_S = 0.25
PROBE_TIMEOUT_S = 0.5
RECONCILE_S = 2.0
LEASE_FILE = Path("/run/ahvlite/agent-lease")


@dataclass(frozen=True)
class LocalVm:
    name: str
    uuid: str
    epoch: int


class LocalVms(Protocol):
    """This host's hypervisor as the agent needs it (libvirt in production)."""

    def running(self) -> list[LocalVm] | None:
        """The protected VMs running here; None when the hypervisor does not answer."""
        ...

    def power_off(self, names: list[str], deadline_s: float) -> set[str]:
        """Destroy ``names`` in parallel; the names confirmed off within the deadline."""
        ...

    def power_on(self, name: str) -> None: ...


class Watchdog(Protocol):
    timeout_s: float

    def feed(self) -> None:
        """Arm (first call) or feed the watchdog."""
        ...

    def disarm(self) -> None:
        """Stop it for good (a clean stop with nothing to protect)."""
        ...

    @property
    def armed(self) -> bool: ...


class LeaseFile:
    """The lease's end on this boot's monotonic clock, for the next agent process."""

    def __init__(self, path: Path = LEASE_FILE) -> None:
        self.path = path

    @staticmethod
    def _boot() -> str:
        try:
            return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return ""

    def load(self) -> float:
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("boot") == self._boot() and isinstance(doc.get("keep_until"), float):
                return float(doc["keep_until"])
        except (OSError, ValueError, AttributeError):
            pass
        return -math.inf

    def save(self, keep_until: float) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps({"boot": self._boot(), "keep_until": keep_until}))
            os.replace(tmp, self.path)
        except OSError as exc:  # losing it costs a fence on restart, never safety
            log.warning("agent: cannot keep the lease in %s: %s", self.path, exc)


class HostAgent:
    """One host's agent. :meth:`heartbeat`, :meth:`probe`, :meth:`tick` (fencing: local
    calls only), :meth:`feed` and :meth:`reconcile` are its steps; :meth:`start` runs
    each on its own thread (a store call that blocks must not stop fencing or feeding),
    a simulator calls them itself."""

    def __init__(self, coord: Coordinator, host: str, local: LocalVms, watchdog: Watchdog,
                 *, lease_s: float, heartbeat_s: float,
                 clock: Clock = SYSTEM, keep_until: float = -math.inf,
                 save_lease: Callable[[float], None] | None = None,
                 fence_deadline_s: float = FENCE_DEADLINE_S) -> None:
        self.coord = coord
        self.host = host
        self.local = local
        self.watchdog = watchdog
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self.lease = AgentLease(lease_s, keep_until)
        self.save_lease = save_lease
        self.fence_deadline_s = fence_deadline_s
        self.seq = 0
        self.last_ack = -math.inf
        self.fenced: dict[str, LocalVm] = {}  # powered off by us, to restore if nobody moved
        # When a tick without the lease last saw no protected VM running (after fencing
        # them). Valid until the lease returns: nothing starts a VM on a host whose
        # agent holds no lease (the leader only targets hosts whose heartbeat moves).
        self.clear_at = -math.inf
        self.history: list[dict[str, object]] = []  # published: our last fences
        self._stop = threading.Event()

    # -- the steps --------------------------------------------------------------

    def heartbeat(self) -> bool:
        """Write our heartbeat; on success the lease runs from when we sent it."""
        sent = self.clock.monotonic()
        self.seq += 1
        doc = AgentDoc(self.host, self.seq, self.lease.lease_s, self.watchdog.timeout_s,
                       self.heartbeat_s, os.getpid(), self.watchdog.armed,
                       tuple(self.history[-10:]), tuple(sorted(self.fenced)))
        try:
            self.coord.put(agent_key(self.host), doc.to_bytes())
        except Exception as exc:  # any failure is just "not acknowledged"
            log.debug("agent: heartbeat failed: %s", exc)
            return False
        self.lease.acknowledged(sent)
        self.last_ack = sent
        if self.save_lease is not None:
            self.save_lease(self.lease.keep_until)
        return True

    def probe(self) -> bool:
        """While heartbeats fail: is a store election under way? (extends the lease)"""
        if self.clock.monotonic() - self.last_ack < 2 * self.heartbeat_s:
            return False
        asked = self.clock.monotonic()
        try:
            states = self.coord.ensemble(PROBE_TIMEOUT_S)
        except Exception as exc:
            log.debug("agent: probe failed: %s", exc)
            return False
        if majority_electing(states, len(states)):
            self.lease.election_seen(asked)
            if self.save_lease is not None:
                self.save_lease(self.lease.keep_until)
            return True
        return False

    def tick(self) -> None:
        now = self.clock.monotonic()
        if self.lease.holds(now):
            self._holding(now)
        else:
            self._fence()

    def feed(self) -> None:
        """Feed the watchdog while we hold the lease, or while nothing protected runs.

        Its own step (and thread): a libvirt or store call that blocks the tick must not
        starve the watchdog of a host that is fine, and this step calls nothing slow.
        """
        now = self.clock.monotonic()
        if self.watchdog.armed and (self.lease.holds(now)
                                    or self.clear_at >= self.lease.keep_until):
            self.watchdog.feed()

    # -- holding the lease ------------------------------------------------------------

    def _holding(self, now: float) -> None:
        running = self.local.running()
        if running and not self.watchdog.armed:
            self.watchdog.feed()  # something to protect: arm it

    def reconcile(self) -> None:
        """With the lease: start again what we fenced and nobody moved, and power off
        older copies. Its own step: store calls may block, the tick (fencing) must not."""
        if not self.lease.holds(self.clock.monotonic()):
            return
        if self.fenced:
            self._restore()
        running = self.local.running()
        if running:
            self._strays(running)

    def _records(self) -> dict[str, tuple[StoredVm, int]]:
        self.coord.sync(PREFIX)
        out = {}
        for name, v in self.coord.children(PREFIX).items():
            try:
                out[name] = (StoredVm.from_bytes(v.value), v.version)
            except BadRecord as exc:
                log.warning("agent: skipping record %s: %s", name, exc)
        return out

    def _restore(self) -> None:
        try:
            records = self._records()
        except AhvliteError as exc:
            log.warning("agent: cannot read records to restore fenced VMs: %s", exc.message)
            return
        for name, was in list(self.fenced.items()):
            got = records.get(name)
            rec = got[0] if got else None
            if (rec is None or rec.host != self.host or rec.uuid != was.uuid
                    or rec.epoch != was.epoch or rec.intent is not None):
                log.warning("agent: %s stays off: it was restarted elsewhere or changed",
                            name)
                del self.fenced[name]
                continue
            try:
                # Claim it: a restart intent written meanwhile makes this fail.
                self.coord.put(key(name), rec.to_bytes(), got[1] if got else None)
                if not self.lease.holds(self.clock.monotonic()):
                    return  # lost the lease meanwhile: the next tick fences again
                self.local.power_on(name)
            except AhvliteError as exc:
                log.warning("agent: %s stays off for now: %s", name, exc.message)
                continue
            del self.fenced[name]
            log.warning("agent: %s was not restarted elsewhere; powered on again", name)

    def _strays(self, running: list[LocalVm]) -> None:
        try:
            records = self._records()
        except AhvliteError as exc:
            log.warning("agent: cannot read records: %s", exc.message)
            return
        stray = []
        for vm in running:
            got = records.get(vm.name)
            if got is None or got[0].uuid != vm.uuid:
                continue
            rec = got[0]
            newest = max(rec.epoch, rec.intent.epoch if rec.intent else 0)
            if newest > vm.epoch:
                stray.append(vm.name)
        if stray:
            log.error("agent: %s run here as an older copy (HA restarted them elsewhere): "
                      "powering them off", ", ".join(stray))
            self.local.power_off(stray, self.fence_deadline_s)

    # -- without the lease: fence -------------------------------------------------------

    def _fence(self) -> None:
        running = self.local.running()
        if running is None:
            return  # cannot confirm anything: no feed, the watchdog resets the host
        if running:
            names = [vm.name for vm in running]
            log.warning("agent: no lease (last acknowledged heartbeat %.1f s ago): fencing %s",
                        self.clock.monotonic() - self.last_ack, ", ".join(names))
            off = self.local.power_off(names, self.fence_deadline_s)
            at = self.clock.time()
            for vm in running:
                if vm.name in off:
                    self.fenced[vm.name] = vm
                self.history.append({"vm": vm.name, "at": at, "ok": vm.name in off})
            del self.history[:-10]
            if off != set(names):
                return  # not confirmed: no feed, the watchdog resets the host
        self.clear_at = self.clock.monotonic()  # confirmed: nothing protected runs, feeding is safe

    # -- process ----------------------------------------------------------------------

    def start(self, tick_s: float = 0.25) -> None:
        # One heartbeat first: a restarted agent on a healthy host must not fence.
        self.heartbeat()
        for target, period in ((self.heartbeat, self.heartbeat_s), (self.probe, PROBE_S),
                               (self.tick, tick_s), (self.feed, FEED_S),
                               (self.reconcile, RECONCILE_S)):
            Periodic(f"agent-{target.__name__}", target, period, clock=self.clock,
                     stop=self._stop).start()

    def stop(self) -> None:
        """Stop the loops; disarm the watchdog only when nothing protected runs here."""
        self._stop.set()
        running = self.local.running()
        if running == [] and self.watchdog.armed:
            self.watchdog.disarm()
