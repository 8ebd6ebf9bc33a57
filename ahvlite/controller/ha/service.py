"""The leader's HA service: time every host agent's heartbeat, and restart the VMs of a
host only once its old copies are surely off.

Each round (``interval_s``):

1. Heartbeats: every host agent's ``agents/HOST`` key is timed by a
   :class:`~ahvlite.controller.ha.lease.FenceClock`. A host whose heartbeat stood still
   for its agent's ``lease_s + watchdog_s`` plus ``margin_s`` is *fenced*: its agent
   powered its VMs off, or its watchdog reset it. A host whose agent's lease is surely
   over but whose libvirt still answers is fenced by the leader itself: it powers the
   VMs off there and sees them off. A host without any agent heartbeat is never fenced:
   its VMs are not protected (``ha show`` says so).
2. Inventory: what every reachable host runs, with the epoch in each domain's metadata,
   updates the VM records (``ha/vms/NAME``, compare-and-set through the fence). Two
   running copies of one VM are resolved: the copy with the older epoch goes (equal
   epochs: the one the record does not name).
3. Restarts: for each VM of a fenced host, placed by ``strategy`` on healthy hosts (not
   in maintenance), the leader first writes the *intent* ("epoch E starts on T") in one
   fenced transaction that also checks the lost host's heartbeat is still the version
   it timed; then it renders the VM from its stored spec on T and starts it. An intent
   is finished on its target only (by this leader or the next); it is re-planned only
   when the target itself is fenced.

A bug or a store error in one round is logged and the next round starts afresh.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ahvlite.clock import SYSTEM, Clock
from ahvlite.controller.coord.api import (
    MUST_NOT_EXIST,
    Check,
    Coordinator,
    Delete,
    NotLeader,
    Put,
    VersionMismatch,
)
from ahvlite.controller.ha.hostops import HostOps
from ahvlite.controller.ha.lease import FenceClock
from ahvlite.controller.ha.records import (
    AGENTS,
    PREFIX,
    STATUS_KEY,
    AgentDoc,
    BadRecord,
    Intent,
    StoredVm,
    agent_key,
    key,
)
from ahvlite.controller.ha.settings import HaSettings
from ahvlite.controller.periodic import Periodic
from ahvlite.errors import AhvliteError
from ahvlite.sched.capacity import HostCapacity
from ahvlite.sched.place import MOST_FREE_MEMORY, Strategy
from ahvlite.sched.restart import VmRecord, plan_restarts
from ahvlite.virt.failover import DomainFacts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostView:
    verdict: str  # healthy, degraded, suspect, fenced, unprotected
    remaining_s: float  # until fenced, while suspect
    reachable: bool  # libvirt answers


class HaService:
    """Leader-only (a :class:`~ahvlite.controller.daemon.Service`)."""

    def __init__(self, coord: Coordinator, hosts: Callable[[], list[str]], ops: HostOps,
                 settings: Callable[[], HaSettings], *, strategy: Strategy = MOST_FREE_MEMORY,
                 clock: Clock = SYSTEM, interval_s: float = 0.5,
                 retry_s: float = 2.0, closed: Callable[[], set[str]] = set) -> None:
        self.coord = coord
        self.hosts = hosts  # the cluster's host names (read every round)
        self.ops = ops
        self.settings = settings
        self.strategy = strategy
        self.clock = clock
        self.interval_s = interval_s
        self.retry_s = retry_s
        # Hosts in (or entering) maintenance: never restart targets. Their own loss is
        # still acted on: a host that dies while entering still runs VMs.
        self.closed = closed
        self.fence = FenceClock(settings().margin_s)
        self._generation: int | None = None
        self.failures: dict[str, str] = {}
        self.restarts: list[dict[str, Any]] = []
        self.resolved: list[dict[str, Any]] = []  # twins resolved
        # VM -> the hosts it was seen running on at once in the last round: a twin is
        # resolved only when the next round sees it again (see _inventory).
        self._twin_suspects: dict[str, frozenset[str]] = {}
        self._last_try: dict[str, float] = {}
        self._verdicts: dict[str, str] = {}  # the last verdict said per host
        self._stopped: dict[str, float] = {}  # desired running, seen off since
        self._in_place: set[str] = set()  # to start again on their own (healthy) host
        self._status = b""
        self.loop = Periodic("ha", self.tick, interval_s, clock=clock)

    # -- the daemon's Service -----------------------------------------------------------

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()
        close = getattr(self.ops, "close", None)
        if close is not None:
            close()

    def tick(self) -> None:
        """One round while we lead; whatever goes wrong is logged, never raised."""
        try:
            if self.coord.is_leader():
                self.round()
        except NotLeader:
            pass  # a session in doubt; real loss of leadership stops us via the daemon
        except AhvliteError as exc:
            log.warning("ha round: %s", exc.message)
        except Exception:  # a bug must not end HA for the rest of the term
            log.exception("ha round failed")

    # -- one round ----------------------------------------------------------------------

    def round(self) -> None:
        now = self.clock.monotonic()
        settings = self.settings()
        self.fence.margin_s = settings.margin_s
        generation = self.coord.generation()
        if generation != self._generation:
            # Our store connection was interrupted: a store election may have run, and
            # agents may have stretched their leases across it. Time everyone afresh.
            self.fence.restart(now)
            self._generation = generation
        hosts = list(self.hosts())
        agents = self._agents(hosts)
        for host in hosts:
            got = agents.get(host)
            self.fence.observe(now, host, got[0].beat(got[1]) if got else None)
        facts = {}
        for host in hosts:
            if self.ops.reachable(host):
                try:
                    facts[host] = self.ops.facts(host)
                except AhvliteError as exc:
                    log.warning("ha: inventory of %s: %s", host, exc.message)
        views = {h: self._view(now, h, h in facts, h in agents) for h in hosts}
        self._say_verdicts(now, views)
        records = self._records()
        self._in_place = set()
        self._inventory(facts, records, agents, views)
        records = self._records()
        self._stopped = {n: t for n, t in self._stopped.items()
                         if n in records and records[n][0].running}
        try:
            closed = self.closed()
        except AhvliteError as exc:
            log.warning("ha: reading maintenance state: %s", exc.message)
            closed = set()
        targets = [h for h in hosts if views[h].verdict == "healthy" and h not in closed]
        self._finish_intents(now, records, facts, views, targets)
        self._restart_in_place(now, records, views)
        for host in hosts:
            if self._released(now, host, facts):
                self._restart_from(now, host, records, facts, targets)
        self._publish(views, agents)

    def _view(self, now: float, host: str, reachable: bool, has_agent: bool) -> HostView:
        if not has_agent:
            return HostView("unprotected", 0.0, reachable)
        if self.fence.fresh(now, host):
            return HostView("healthy" if reachable else "degraded", 0.0, reachable)
        remaining = self.fence.remaining_s(now, host)
        return HostView("fenced" if remaining == 0 else "suspect", remaining, reachable)

    def _say_verdicts(self, now: float, views: dict[str, HostView]) -> None:
        """Log each host's verdict when it changes (not every round): what HA thinks of
        a host, and from when on its VMs may start elsewhere, shows in the log."""
        for host, v in views.items():
            before = self._verdicts.get(host)
            if v.verdict == before:
                continue
            self._verdicts[host] = v.verdict
            if before is None and v.verdict == "healthy":
                continue  # a leader's first look at a healthy host is no news
            log.warning("ha: %s is %s (was %s; heartbeat still for %.1f s%s%s)", host,
                        v.verdict, before or "unknown", self.fence.still_s(now, host),
                        f", fenced in {v.remaining_s:.1f} s" if v.verdict == "suspect" else "",
                        "" if v.reachable else ", libvirt does not answer")

    def _released(self, now: float, host: str, facts: dict[str, list[DomainFacts]]) -> bool:
        """The host's protected VMs may start elsewhere: its agent's lease is over and
        either its watchdog surely fired, or its libvirt answers (we fence through it)."""
        if self.fence.fenced(now, host):
            return True
        return self.fence.lease_over(now, host) and host in facts

    # -- reading the store --------------------------------------------------------------

    def _agents(self, hosts: list[str]) -> dict[str, tuple[AgentDoc, int]]:
        out = {}
        for host, v in self.coord.children(AGENTS).items():
            try:
                doc = AgentDoc.from_bytes(v.value)
            except BadRecord as exc:
                log.warning("ha: skipping heartbeat of %s: %s", host, exc)
                continue
            if doc.host == host and host in hosts:
                out[host] = (doc, v.version)
        return out

    def _records(self) -> dict[str, tuple[StoredVm, int]]:
        out = {}
        for name, v in self.coord.children(PREFIX).items():
            try:
                rec = StoredVm.from_bytes(v.value)
            except BadRecord as exc:
                self.failures[name] = f"record unreadable: {exc}"
                continue
            if rec.name == name:
                out[name] = (rec, v.version)
        return out

    def _write(self, ops: list[Any]) -> bool:
        """A fenced compare-and-set; False when someone else wrote first."""
        try:
            self.coord.fenced(ops)
            return True
        except VersionMismatch as exc:
            log.info("ha: %s (will look again)", exc.message)
            return False

    # -- inventory ----------------------------------------------------------------------

    def _inventory(self, facts: dict[str, list[DomainFacts]],
                   records: dict[str, tuple[StoredVm, int]],
                   agents: dict[str, tuple[AgentDoc, int]], views: dict[str, HostView]) -> None:
        running: dict[str, list[tuple[str, DomainFacts]]] = {}
        defined: dict[str, list[tuple[str, DomainFacts]]] = {}
        suspects, self._twin_suspects = self._twin_suspects, {}
        for host, fs in facts.items():
            for f in fs:
                defined.setdefault(f.name, []).append((host, f))
                if f.active:
                    running.setdefault(f.name, []).append((host, f))
        for name in sorted(set(records) | set(defined)):
            rec, version = records.get(name, (None, -1))
            copies = [(h, f) for h, f in running.get(name, [])
                      if rec is None or f.uuid == rec.uuid]
            if len(copies) > 1 and any(f.migrating for _, f in copies):
                # A live migration's two ends: libvirt leaves one of them, and the disk
                # leases never let both run; neither is a stray to power off.
                log.info("ha: %s is being migrated between %s", name,
                         " and ".join(h for h, _ in copies))
            elif len(copies) > 1:
                # Hosts are read one after another, not at one instant: a migration that
                # switched over between two reads shows its source still running and its
                # destination already running. Only a twin seen on the same hosts again
                # a round later is one (the leases keep a real one off the disks
                # meanwhile; docs/ha.md).
                on = frozenset(h for h, _ in copies)
                if suspects.get(name) == on:
                    self._resolve_twins(name, rec, copies)
                else:
                    self._twin_suspects[name] = on
                    log.warning("ha: %s seen running on %s at once; looking again next "
                                "round", name, " and ".join(sorted(on)))
            elif copies:
                self._seen_running(name, rec, version, *copies[0])
            elif rec is None:
                host, f = defined[name][0]
                self._write([Put(key(name), _new_record(host, f, False).to_bytes(),
                                 MUST_NOT_EXIST)])
            else:
                self._seen_stopped(rec, version, defined.get(name, []), facts, agents, views)
        for host, fs in facts.items():
            for f in fs:
                got = records.get(f.name)
                rec = got[0] if got else None
                if (rec is not None and not f.active and rec.host != host
                        and host in rec.restarted_from and f.uuid == rec.uuid
                        and self.ops.remove_stale(host, f.name, f.uuid)):
                    log.warning("ha: removed stale definition of %s from %s (it runs on %s)",
                                f.name, host, rec.host)

    def _resolve_twins(self, name: str, rec: StoredVm | None,
                       copies: list[tuple[str, DomainFacts]]) -> None:
        """One VM running on several hosts: the newest epoch stays; on equal epochs the
        copy on the host the record names (or the first) stays. The rest are destroyed."""
        owner = rec.host if rec is not None else None
        keep = max(copies, key=lambda hf: (hf[1].epoch, hf[0] == owner))
        for host, f in copies:
            if host == keep[0]:
                continue
            log.error("ha: %s runs on %s (epoch %d) and %s (epoch %d): powering off the "
                      "copy on %s", name, keep[0], keep[1].epoch, host, f.epoch, host)
            try:
                self.ops.destroy(host, name)
                self.resolved.append({"vm": name, "kept": keep[0], "destroyed": host,
                                      "at": self.clock.time()})
                del self.resolved[:-20]
            except AhvliteError as exc:
                log.error("ha: could not power off %s on %s: %s", name, host, exc.message)

    def _seen_running(self, name: str, rec: StoredVm | None, version: int, host: str,
                      f: DomainFacts) -> None:
        if rec is None:
            self._write([Put(key(name), _new_record(host, f, True).to_bytes(), MUST_NOT_EXIST)])
            return
        newest = max(rec.epoch, rec.intent.epoch if rec.intent else 0)
        if f.epoch < newest:
            # An older incarnation (a stale definition started by hand, say): HA has a
            # newer one, so this copy goes, even while the new one is not up yet.
            log.error("ha: %s runs on %s as epoch %d, older than %d: powering it off",
                      name, host, f.epoch, newest)
            try:
                self.ops.destroy(host, name)
            except AhvliteError as exc:
                log.error("ha: could not power off %s on %s: %s", name, host, exc.message)
            return
        if host != rec.host or rec.intent is not None:
            new = rec.moved_to(host, f.epoch)  # migrated, or our restart came up
            if rec.intent is not None and rec.intent.target == host:
                self.failures.pop(name, None)
        else:
            new = rec
        new = replace(new, running=True, memory_mib=f.memory_mib, labels=f.labels,
                      has_pci_hostdev=f.has_pci_hostdev, spec=f.spec or rec.spec,
                      nvram_volume=f.nvram_volume or rec.nvram_volume)
        if new != rec:
            self._write([Put(key(name), new.to_bytes(), version)])

    def _seen_stopped(self, rec: StoredVm, version: int, defined: list[tuple[str, DomainFacts]],
                      facts: dict[str, list[DomainFacts]],
                      agents: dict[str, tuple[AgentDoc, int]],
                      views: dict[str, HostView]) -> None:
        if rec.intent is not None or rec.host not in facts:
            return  # a restart under way, or we cannot see the owner
        here = [f for h, f in defined if h == rec.host and f.uuid == rec.uuid]
        if not here:
            # Gone from its owner and running nowhere we see: deleted.
            self._write([Delete(key(rec.name), version)])
            return
        if not rec.running:
            return
        if here[0].shut_down:
            # Its guest shut down: what the VM's owner wanted, not HA's to undo.
            self._write([Put(key(rec.name), replace(rec, running=False).to_bytes(), version)])
            return
        agent = agents.get(rec.host)
        if views[rec.host].verdict != "healthy" or agent is None or rec.name in agent[0].pending:
            return  # its agent fenced it and will start it again, or the host is in doubt
        # Off on a healthy host without having shut down: its host was reset, or it was
        # fenced by an agent that has restarted since. Start it again where it is.
        self._stopped.setdefault(rec.name, self.clock.monotonic())
        if self.clock.monotonic() - self._stopped[rec.name] >= self.retry_s:
            self._in_place.add(rec.name)

    # -- restarts -----------------------------------------------------------------------

    def _capacities(self, targets: list[str]) -> list[HostCapacity]:
        out = []
        for host in targets:
            try:
                total, free = self.ops.capacity(host)
            except AhvliteError:
                continue
            out.append(HostCapacity(host, total, free))
        return out

    def _restart_from(self, now: float, lost: str, records: dict[str, tuple[StoredVm, int]],
                      facts: dict[str, list[DomainFacts]], targets: list[str]) -> None:
        mine = [(r, v) for r, v in records.values()
                if r.host == lost and r.running and r.intent is None]
        if not mine or now - self._last_try.get(lost, -1e9) < self.retry_s:
            return
        self._last_try[lost] = now
        # Its agent's lease is over, its watchdog may not have fired, but its libvirt
        # answers: power the VMs off there ourselves and see them off.
        if not self.fence.fenced(now, lost) and not self._fence_through_libvirt(
                lost, [r for r, _ in mine]):
            return
        version = self.fence.version(lost)
        if version is None:
            return
        norestart = [(r, v) for r, v in mine if r.spec is None]
        for r, _ in norestart:
            self.failures[r.name] = ("not restarted: no stored spec (not made by ahvlite's "
                                     "designer)")
        restartable = {r.name: (r, v) for r, v in mine if r.spec is not None}
        placed = {r.name: r.host for r, _ in records.values()
                  if r.running and r.host in targets}
        plan = plan_restarts([r.record() for r, _ in restartable.values()],
                             self._capacities(targets), strategy=self.strategy,
                             running=placed)
        for vm, why in plan.unplaced:
            self.failures[vm] = f"not placed: {why}"
            log.warning("ha: %s from %s not placed: %s", vm, lost, why)
        for vm, why in plan.skipped:
            self.failures[vm] = f"not restarted: {why}"
        for vm, target in plan.steps:
            rec, rv = restartable[vm]
            intent = Intent(target, lost, rec.epoch + 1, self.clock.time(),
                            self.coord.check_leader())
            if not self._write([Check(agent_key(lost), version),
                                Put(key(vm), rec.with_intent(intent).to_bytes(), rv)]):
                # Its heartbeat moved (it is back) or the record changed: time it again.
                self.fence.forget(lost)
                return
            self._start(now, rec.with_intent(intent), rv + 1, intent)

    def _fence_through_libvirt(self, host: str, vms: list[StoredVm]) -> bool:
        try:
            for vm in vms:
                if VmRecord(vm.name, host, vm.memory_mib, True, vm.labels,
                            vm.has_pci_hostdev).protected:
                    self.ops.destroy(host, vm.name)
            still = {f.name for f in self.ops.facts(host) if f.active}
        except AhvliteError as exc:
            log.warning("ha: fencing %s through libvirt: %s", host, exc.message)
            return False
        left = [vm.name for vm in vms if vm.name in still]
        if left:
            log.warning("ha: %s still runs %s after power off", host, ", ".join(left))
            return False
        log.warning("ha: %s's agent lost its lease; its VMs are off (seen through libvirt)",
                    host)
        return True

    def _finish_intents(self, now: float, records: dict[str, tuple[StoredVm, int]],
                        facts: dict[str, list[DomainFacts]], views: dict[str, HostView],
                        targets: list[str]) -> None:
        for rec, version in records.values():
            intent = rec.intent
            if intent is None:
                continue
            target_view = views.get(intent.target)
            if target_view is not None and target_view.verdict == "healthy":
                self._start(now, rec, version, intent)
            elif intent.target not in views or self.fence.fenced(now, intent.target):
                self._retarget(now, rec, version, intent, targets)

    def _retarget(self, now: float, rec: StoredVm, version: int, intent: Intent,
                  targets: list[str]) -> None:
        """The intent's target is fenced (or gone): whatever started there is off."""
        checks: list[Any] = []
        if intent.target in self.hosts():
            tv = self.fence.version(intent.target)
            if tv is None:
                return
            checks.append(Check(agent_key(intent.target), tv))
        others = [t for t in targets if t != intent.target]
        plan = plan_restarts([replace(rec.record(), host=intent.target)],
                             self._capacities(others), strategy=self.strategy)
        if not plan.steps:
            self.failures[rec.name] = f"not placed: {plan.unplaced[0][1] if plan.unplaced else ''}"
            return
        target = plan.steps[0][1]
        new = Intent(target, intent.source, intent.epoch + 1, self.clock.time(),
                     self.coord.check_leader())
        if self._write([*checks, Put(key(rec.name), rec.with_intent(new).to_bytes(), version)]):
            self._start(now, rec.with_intent(new), version + 1, new)

    def _restart_in_place(self, now: float, records: dict[str, tuple[StoredVm, int]],
                          views: dict[str, HostView]) -> None:
        for name in sorted(self._in_place):
            got = records.get(name)
            if got is None:
                continue
            rec, version = got
            if (rec.intent is not None or not rec.running or rec.spec is None
                    or not rec.record().protected or views[rec.host].verdict != "healthy"):
                continue
            intent = Intent(rec.host, rec.host, rec.epoch + 1, self.clock.time(),
                            self.coord.check_leader())
            if self._write([Put(key(name), rec.with_intent(intent).to_bytes(), version)]):
                log.warning("ha: %s is off on its healthy host %s without having shut "
                            "down: starting it there again", name, rec.host)
                self._start(now, rec.with_intent(intent), version + 1, intent)

    def _start(self, now: float, rec: StoredVm, version: int, intent: Intent) -> None:
        if now - self._last_try.get(f"vm:{rec.name}", -1e9) < self.retry_s:
            return
        self._last_try[f"vm:{rec.name}"] = now
        # The side effect happens only right after a fenced check of the intent: a
        # deposed leader (or one reading a stale store member) fails here.
        if not self._write([Check(key(rec.name), version)]):
            return
        t0 = self.clock.monotonic()
        try:
            self.ops.start(intent.target, rec, intent.epoch)
        except AhvliteError as exc:
            # A held disk lease means an old copy may still run: try again later, never
            # forced; the intent stays, so only this target is ever tried.
            self.failures[rec.name] = f"start on {intent.target} failed: {exc.message}"
            log.warning("ha: restart of %s on %s failed (will retry): %s", rec.name,
                        intent.target, exc.message)
            return
        self.failures.pop(rec.name, None)
        self.restarts.append({"vm": rec.name, "from": intent.source, "to": intent.target,
                              "epoch": intent.epoch, "at": self.clock.time(),
                              "start_s": round(self.clock.monotonic() - t0, 3)})
        del self.restarts[:-50]
        log.warning("ha: restarted %s from %s on %s (epoch %d)", rec.name, intent.source,
                    intent.target, intent.epoch)

    # -- status -------------------------------------------------------------------------

    def _publish(self, views: dict[str, HostView],
                 agents: dict[str, tuple[AgentDoc, int]]) -> None:
        now = self.clock.monotonic()
        doc = {"hosts": {h: {"verdict": v.verdict, "remaining_s": round(v.remaining_s, 1),
                             "libvirt": v.reachable,
                             "heartbeat_still_s": round(self.fence.still_s(now, h), 1),
                             "fences": list(agents[h][0].fenced) if h in agents else []}
                         for h, v in views.items()},
               "failures": self.failures, "restarts": self.restarts,
               "twins_resolved": self.resolved}
        data = json.dumps(doc, sort_keys=True, default=str).encode()
        if data != self._status:
            self.coord.fenced([Put(STATUS_KEY, data)])
            self._status = data


def _new_record(host: str, f: DomainFacts, running: bool) -> StoredVm:
    return StoredVm(f.name, f.uuid, host, f.memory_mib, running, f.labels, f.has_pci_hostdev,
                    f.spec, f.nvram_volume, f.epoch)
