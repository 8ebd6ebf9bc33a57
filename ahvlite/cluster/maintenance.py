"""Host maintenance mode: stop placing VMs on a host, live-migrate its VMs elsewhere,
shut its pinned VMs down cleanly; and the way back (``exit``, optionally ``restore``).

The state is the ``maintenance`` document of the cluster's state in the store, so every
controller sees it and it survives restarts: ``{"hosts": {HOST: {"state", "since",
"moved": [{vm, to}], "shut_down": [vm], "failed": [{vm, reason}], "left": [vm]}}}``.
A host listed there is unschedulable (``ahvlite.cluster.schedulable``) from the first
write until ``exit``.

The move plan is pure (:func:`plan_evacuation`): biggest VMs first, each to the host
with the most free memory left after the moves already planned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from ahvlite.cluster import migrate, vms
from ahvlite.cluster.convergence import ConvergenceSettings
from ahvlite.cluster.placement import HostCapacity
from ahvlite.cluster.schedulable import MAINTENANCE_KEY, maintenance_doc
from ahvlite.cluster.state import ClusterState
from ahvlite.errors import AhvliteError, Conflict, InvalidSpec, NotFound, OperationFailed
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.virt import domains

Report = Callable[[str], None]
# Bounded parallelism: each migration already fills the link; two overlap one's setup
# and switch-over with the other's copying (see bench/migration.py for the figures).
DEFAULT_PARALLEL = 2


def _quiet(_msg: str) -> None:
    pass


# -- pure planning ------------------------------------------------------------------

@dataclass(frozen=True)
class VmOnHost:
    name: str
    state: str
    memory_mib: int
    pinned: bool


@dataclass(frozen=True)
class EvacuationPlan:
    moves: tuple[tuple[str, str], ...] = ()  # (vm, destination)
    shutdowns: tuple[str, ...] = ()  # pinned, running: shut down cleanly
    left: tuple[str, ...] = ()  # not running: stay defined here, nothing to move
    unplaceable: tuple[tuple[str, str], ...] = ()  # (vm, why)


def plan_evacuation(host: str, on_host: list[VmOnHost], capacities: list[HostCapacity],
                    closed: set[str]) -> EvacuationPlan:
    """Where each VM of ``host`` goes. Pure: the caller gathers the facts."""
    targets = [c for c in capacities
               if c.reachable and c.name != host and c.name not in closed]
    pending: dict[str, int] = {}
    moves, shutdowns, left, unplaceable = [], [], [], []
    running = [v for v in on_host if v.state in migrate.MIGRATABLE_STATES]
    for v in sorted(on_host, key=lambda v: v.name):
        if v.state not in migrate.MIGRATABLE_STATES:
            left.append(v.name)
    for v in sorted(running, key=lambda v: (-v.memory_mib, v.name)):
        if v.pinned:
            shutdowns.append(v.name)
            continue
        fits = [c for c in targets if c.free_mib - pending.get(c.name, 0) >= v.memory_mib]
        if not fits:
            most = max((c.free_mib - pending.get(c.name, 0) for c in targets), default=0)
            unplaceable.append((v.name, f"needs {v.memory_mib} MiB, the most free on any "
                                        f"other schedulable host is {most} MiB"))
            continue
        best = min(fits, key=lambda c: (pending.get(c.name, 0) - c.free_mib, c.name))
        pending[best.name] = pending.get(best.name, 0) + v.memory_mib
        moves.append((v.name, best.name))
    return EvacuationPlan(tuple(moves), tuple(shutdowns), tuple(left), tuple(unplaceable))


# -- state --------------------------------------------------------------------------

def status(cluster: ClusterSpec) -> dict[str, Any]:
    """Every host's maintenance state (``schedulable`` for hosts not in maintenance)."""
    doc = maintenance_doc(cluster.state)["hosts"]
    return {"hosts": {h.name: doc.get(h.name, {"state": "schedulable"})
                      for h in cluster.hosts}}


def _update_host(st: ClusterState, host: str, change: Callable[[dict[str, Any]], None], *,
                 create: bool = False) -> dict[str, Any]:
    """Edit ``host``'s entry. Only the first step of entering creates it: a later update
    that finds it gone (``exit`` removed it) fails rather than put the host back into
    maintenance behind the operator's back."""
    def edit(doc: dict[str, Any]) -> None:
        hosts = doc.setdefault("hosts", {})
        if host not in hosts:
            if not create:
                raise Conflict(f"host {host} left maintenance while this run was still "
                               "working on it; nothing more is recorded",
                               hint=f"`ahvlite host maintenance enter {host}` to start "
                                    "over")
            hosts[host] = {}
        change(hosts[host])
    return st.update(MAINTENANCE_KEY, edit)["hosts"][host]


def check_parallel(parallel: int, field: str = "parallel") -> int:
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise InvalidSpec(field, parallel, "a whole number of migrations at a time >= 1")
    return parallel


@contextmanager
def host_lock(cluster: ClusterSpec, host: str, *, doing: str = "enter") -> Iterator[None]:
    """One maintenance run (``enter`` or ``exit``) per host at a time, cluster-wide: the
    store's lock, held for the whole run (a run on a leader that dies releases it with
    its session; the next leader resumes the run)."""
    cluster.host(host)
    with cluster.state.lock(
            f"maintenance-{host}",
            busy=f"cannot {doing} maintenance of {host}: another maintenance run of "
                 f"{host} is still running",
            hint="wait for it (`ahvlite host maintenance show` follows it)"):
        yield


# -- enter --------------------------------------------------------------------------

@dataclass
class EnterReport:
    host: str
    state: str
    moved: list[dict[str, Any]] = field(default_factory=list)
    shut_down: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    took_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mark_unschedulable(cluster: ClusterSpec, host: str) -> dict[str, Any]:
    """Step one of entering: the host takes no new VMs from now on."""
    cluster.host(host)
    st = cluster.state

    def start(entry: dict[str, Any]) -> None:
        if entry.get("state") != "in_maintenance":
            entry["state"] = "entering"
        entry.setdefault("since", time.time())
        entry.setdefault("moved", [])
        entry.setdefault("shut_down", [])
        entry["failed"] = []
    return _update_host(st, host, start, create=True)


def enter(cluster: ClusterSpec, host: str, *,
          settings: ConvergenceSettings | None = None, parallel: int = DEFAULT_PARALLEL,
          shutdown_timeout_s: float = 60, report: Report = _quiet,
          on_progress: Callable[[migrate.MigrationProgress], None] | None = None) \
        -> EnterReport:
    """Put ``host`` into maintenance and empty it; returns what happened. Raises
    OperationFailed (after recording it) when a VM could not leave, Conflict when
    another ``enter``/``exit`` of ``host`` runs. Run again after an interruption, it
    picks up where the host stands (VMs already moved are not there any more)."""
    check_parallel(parallel)
    with host_lock(cluster, host, doing="enter"):
        return _enter(cluster, host, settings=settings, parallel=parallel,
                      shutdown_timeout_s=shutdown_timeout_s, report=report,
                      on_progress=on_progress)


def _enter(cluster: ClusterSpec, host: str, *,
           settings: ConvergenceSettings | None, parallel: int, shutdown_timeout_s: float,
           report: Report,
           on_progress: Callable[[migrate.MigrationProgress], None] | None) -> EnterReport:
    t0 = time.monotonic()
    st = cluster.state
    mark_unschedulable(cluster, host)
    report(f"{host} takes no new VMs")
    closed = set(maintenance_doc(st)["hosts"])
    with vms.connect(cluster) as hosts:
        conn = hosts.conn(host)
        on_host = []
        for dom in domains.all_domains(conn):
            info = vms.info_of(host, dom)
            on_host.append(VmOnHost(info.name, info.state, info.current_memory_mib,
                                    info.pinned))
        plan = plan_evacuation(host, on_host, vms.capacities(hosts), closed)
    report(f"plan: {len(plan.moves)} to migrate, {len(plan.shutdowns)} pinned to shut "
           f"down, {len(plan.left)} not running")
    out = EnterReport(host=host, state="entering", left=list(plan.left),
                      failed=[{"vm": v, "reason": r} for v, r in plan.unplaceable])

    def move(vm: str, to: str) -> None:
        report(f"migrating {vm} to {to}")
        try:
            try:
                res = migrate.migrate_vm(cluster, vm, to=to, settings=settings,
                                         on_progress=on_progress)
            except (migrate.MigrationAborted, OperationFailed):
                raise
            except AhvliteError as exc:
                # The planned host failed a check the plan cannot see (CPU, networks):
                # let the migration pick any host that passes them all.
                report(f"{vm}: {to} refused ({exc.message}); choosing another host")
                res = migrate.migrate_vm(cluster, vm, settings=settings,
                                         on_progress=on_progress)
        except AhvliteError as exc:
            out.failed.append({"vm": vm, "reason": exc.message})
            report(f"{vm}: could not move: {exc.message}")
            return
        entry = {"vm": vm, "to": res.destination, "downtime_ms": res.downtime_ms,
                 "total_ms": res.total_ms}
        out.moved.append(entry)
        _update_host(st, host, lambda e: e.setdefault("moved", []).append(entry))
        report(f"{vm} now runs on {res.destination} (downtime {res.downtime_ms} ms)")

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for f in [pool.submit(move, vm, to) for vm, to in plan.moves]:
            f.result()
    for vm in plan.shutdowns:
        report(f"shutting down pinned {vm}")
        try:
            vms.shutdown_vm(cluster, vm, timeout_s=shutdown_timeout_s, force=True)
        except AhvliteError as exc:
            out.failed.append({"vm": vm, "reason": exc.message})
            continue
        out.shut_down.append(vm)

        def note(e: dict[str, Any], vm: str = vm) -> None:
            e.setdefault("shut_down", []).append(vm)
        _update_host(st, host, note)
    out.state = "in_maintenance" if not out.failed else "entering"
    out.took_s = round(time.monotonic() - t0, 2)

    def finish(e: dict[str, Any]) -> None:
        e["state"] = out.state
        e["failed"] = out.failed
        e["left"] = out.left
        e["took_s"] = out.took_s
    _update_host(st, host, finish)
    if out.failed:
        raise OperationFailed(
            f"{host} is unschedulable but not empty: "
            + "; ".join(f"{f['vm']}: {f['reason']}" for f in out.failed),
            hint=f"fix the cause and run `ahvlite host maintenance enter {host}` again, "
                 "or shut those VMs down")
    return out


# -- exit ---------------------------------------------------------------------------

def exit_(cluster: ClusterSpec, host: str, *, restore: bool = False,
          settings: ConvergenceSettings | None = None, parallel: int = DEFAULT_PARALLEL,
          report: Report = _quiet,
          on_progress: Callable[[migrate.MigrationProgress], None] | None = None) -> \
        dict[str, Any]:
    """Make ``host`` schedulable again; start the pinned VMs it shut down; with
    ``restore``, migrate the VMs it sent away back (those still running elsewhere)."""
    cluster.host(host)
    check_parallel(parallel)
    # An exit while enter still empties the host is refused (Conflict naming the running
    # enter) rather than cancelling it: enter may be mid-migration, and cutting that off
    # from here could not be clean. The operator waits, or stops enter and then exits.
    with host_lock(cluster, host, doing="exit"):
        return _exit(cluster, host, restore=restore, settings=settings, parallel=parallel,
                     report=report, on_progress=on_progress)


def _exit(cluster: ClusterSpec, host: str, *, restore: bool,
          settings: ConvergenceSettings | None, parallel: int, report: Report,
          on_progress: Callable[[migrate.MigrationProgress], None] | None) -> \
        dict[str, Any]:
    st = cluster.state
    entry: dict[str, Any] = {}

    def drop(doc: dict[str, Any]) -> None:
        hosts = doc.setdefault("hosts", {})
        if host not in hosts:
            raise NotFound(f"host {host} is not in maintenance",
                           hint="`ahvlite host maintenance show` lists the hosts' states")
        entry.update(hosts.pop(host))
    st.update(MAINTENANCE_KEY, drop)
    report(f"{host} is schedulable again")
    started, returned, skipped = [], [], []
    for vm in entry.get("shut_down", []):
        try:
            vms.start_vm(cluster, vm)
            started.append(vm)
            report(f"started pinned {vm}")
        except AhvliteError as exc:
            skipped.append({"vm": vm, "reason": exc.message})

    def bring_back(vm: str) -> None:
        try:
            res = migrate.migrate_vm(cluster, vm, to=host, settings=settings,
                                     on_progress=on_progress)
        except AhvliteError as exc:
            # Deleted, stopped or pinned meanwhile, or it does not fit any more: it
            # stays where it is, and the caller hears why.
            skipped.append({"vm": vm, "reason": exc.message})
            report(f"{vm} stays where it is: {exc.message}")
            return
        returned.append({"vm": vm, "from": res.source, "downtime_ms": res.downtime_ms})
        report(f"{vm} is back on {host}")

    if restore:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            for f in [pool.submit(bring_back, m["vm"]) for m in entry.get("moved", [])]:
                f.result()
    return {"host": host, "state": "schedulable", "started": started,
            "restored": returned, "not_restored": skipped}
