"""Host maintenance mode: stop placing VMs on a host, live-migrate its VMs elsewhere,
shut its pinned VMs down cleanly; and the way back (``exit``, optionally ``restore``).

The state is the ``maintenance`` document of the cluster's state in the store, so every
controller sees it and it survives restarts: ``{"hosts": {HOST: {"state", "since",
"moved": [{vm, to}], "shut_down": [vm], "failed": [{vm, reason}], "left": [vm]}}}``.
A host listed there is unschedulable (``ahvlite.cluster.schedulable``) from the first
write until ``exit``.

The move plan is pure (:func:`plan_evacuation`): biggest VMs first, each to the host
with the most free memory left after the moves already planned.

A run is resumable: its two first steps (mark the host, plan) go through ``steps`` (a
task records them, so a new leader keeps the same plan), and what each VM did is
written to the document as it happens. A run taken over after its leader died moves
only what has not moved: a VM the document lists is done, and one that runs elsewhere
already (its migration finished, its record was lost with the old leader) is recorded,
not moved again. The hosts are reached through :class:`HostOps`, so the run itself is
tested on a simulated cluster as well as on libvirt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ahvlite.clock import SYSTEM
from ahvlite.cluster import migrate, vms
from ahvlite.cluster.convergence import ConvergenceSettings
from ahvlite.cluster.guard import no_guard
from ahvlite.cluster.schedulable import MAINTENANCE_KEY, maintenance_doc
from ahvlite.cluster.state import ClusterState
from ahvlite.errors import AhvliteError, Conflict, InvalidSpec, NotFound, OperationFailed
from ahvlite.sched.capacity import HostCapacity
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.virt import guest

Progress = Callable[[int, str], None]  # (percent of the run, message)
Moves = list[tuple[str, str]]  # (vm, destination)
# Bounded parallelism: each migration already fills the link; two overlap one's setup
# and switch-over with the other's copying (see bench/migration.py for the figures).
DEFAULT_PARALLEL = 2
LOCK_WAIT_S = 0.5  # a second run of the same host is refused at once
ADMITTED = "admitted"  # the step after which an enter empties the host, come what may


def _quiet(_pct: int, _msg: str) -> None:
    pass


def _admit_all(_moves: Moves) -> None:
    pass


class Steps(Protocol):
    """Runs ``fn`` once per run and remembers its result (a task's ``ctx.step``)."""

    def step(self, name: str, fn: Callable[[], Any]) -> Any: ...


class _Direct:
    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        return fn()


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

    def to_dict(self) -> dict[str, Any]:
        return {"moves": [list(m) for m in self.moves], "shutdowns": list(self.shutdowns),
                "left": list(self.left), "unplaceable": [list(u) for u in self.unplaceable]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvacuationPlan:
        return cls(tuple((str(v), str(t)) for v, t in d["moves"]),
                   tuple(str(v) for v in d["shutdowns"]), tuple(str(v) for v in d["left"]),
                   tuple((str(v), str(w)) for v, w in d["unplaceable"]))


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


# -- the hosts ----------------------------------------------------------------------

class HostOps(Protocol):
    """What a maintenance run needs of the hosts (a simulator provides its own)."""

    def vms_on(self, host: str) -> list[VmOnHost]: ...
    def capacities(self) -> list[HostCapacity]: ...
    def where(self, vm: str) -> tuple[str, str] | None:
        """(host, state) of ``vm`` now, None when no host has it."""
        ...
    def state_on(self, host: str, vm: str) -> str | None:
        """``vm``'s state on ``host``, None when ``host`` does not have it."""
        ...
    def migrate(self, vm: str, to: str, settings: ConvergenceSettings | None,
                on_progress: Callable[[migrate.MigrationProgress], None] | None,
                ) -> migrate.MigrateResult: ...
    def shutdown(self, vm: str, timeout_s: float) -> None: ...
    def start(self, vm: str) -> None: ...


class LibvirtOps:
    """:class:`HostOps` over libvirt (the cluster layer's VM and migration calls)."""

    def __init__(self, cluster: ClusterSpec) -> None:
        self.cluster = cluster

    def vms_on(self, host: str) -> list[VmOnHost]:
        with vms.connect(self.cluster) as hosts:
            out = []
            for dom in guest.all_guests(hosts.conn(host)):
                info = vms.info_of(host, dom)
                out.append(VmOnHost(info.name, info.state, info.current_memory_mib,
                                    info.pinned))
            return out

    def capacities(self) -> list[HostCapacity]:
        with vms.connect(self.cluster) as hosts:
            return vms.capacities(hosts)

    def where(self, vm: str) -> tuple[str, str] | None:
        try:
            info = vms.show_vm(self.cluster, vm)
        except NotFound:
            return None
        return info.host, info.state

    def state_on(self, host: str, vm: str) -> str | None:
        with vms.connect(self.cluster) as hosts:
            dom = guest.find(hosts.conn(host), vm)
            return None if dom is None else dom.state()

    def migrate(self, vm: str, to: str, settings: ConvergenceSettings | None,
                on_progress: Callable[[migrate.MigrationProgress], None] | None,
                ) -> migrate.MigrateResult:
        return migrate.migrate_vm(self.cluster, vm, to=to, settings=settings,
                                  on_progress=on_progress)

    def shutdown(self, vm: str, timeout_s: float) -> None:
        vms.shutdown_vm(self.cluster, vm, timeout_s=timeout_s, force=True)

    def start(self, vm: str) -> None:
        vms.start_vm(self.cluster, vm)


# -- state --------------------------------------------------------------------------

def status(cluster: ClusterSpec) -> dict[str, Any]:
    """Every host's maintenance state (``schedulable`` for hosts not in maintenance)."""
    doc = maintenance_doc(cluster.state)["hosts"]
    return {"cluster": cluster.name,
            "hosts": {h.name: doc.get(h.name, {"state": "schedulable"})
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


def _entry(st: ClusterState, host: str) -> dict[str, Any]:
    return dict(maintenance_doc(st)["hosts"].get(host) or {})


def check_parallel(parallel: int, field: str = "parallel") -> int:
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise InvalidSpec(field, parallel, "a whole number of migrations at a time >= 1")
    return parallel


@contextmanager
def host_lock(cluster: ClusterSpec, host: str, *, doing: str = "enter",
              wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """One maintenance run (``enter`` or ``exit``) per host at a time, cluster-wide: the
    store's lock, held for the whole run (a run on a leader that dies releases it with
    its session; the next leader resumes the run, waiting ``wait_s`` for that)."""
    cluster.host(host)
    with cluster.state.lock(
            f"maintenance-{host}",
            busy=f"cannot {doing} maintenance of {host}: another maintenance run of "
                 f"{host} is still running",
            hint="wait for it (`ahvlite host maintenance show` follows it)",
            timeout_s=wait_s):
        yield


class _Serial:
    """Progress from the worker threads, one call at a time, with the run's percent."""

    def __init__(self, progress: Progress, total: int, *, done: int = 0) -> None:
        self._progress = progress
        self._total = max(total, 1)
        self._done = done
        self._mu = threading.Lock()

    def pct(self) -> int:
        return 10 + int(85 * self._done / self._total)

    def say(self, message: str, *, done: bool = False) -> None:
        with self._mu:
            if done:
                self._done += 1
            self._progress(self.pct(), message)


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
        entry.setdefault("since", SYSTEM.time())
        entry.setdefault("moved", [])
        entry.setdefault("shut_down", [])
        entry["failed"] = []
    return _update_host(st, host, start, create=True)


@dataclass
class Hooks:
    """What a caller adds to a run: its step recorder, the leadership check before each
    change on a host, the HA admission of moves, and where progress goes."""

    steps: Steps = field(default_factory=_Direct)
    guard: Callable[[], object] = no_guard
    admit: Callable[[Moves], None] = _admit_all
    progress: Progress = _quiet
    on_progress: Callable[[migrate.MigrationProgress], None] | None = None


def enter(cluster: ClusterSpec, host: str, *,
          settings: ConvergenceSettings | None = None, parallel: int = DEFAULT_PARALLEL,
          shutdown_timeout_s: float = 60, ops: HostOps | None = None,
          hooks: Hooks | None = None, lock_wait_s: float = LOCK_WAIT_S) -> EnterReport:
    """Put ``host`` into maintenance and empty it; returns what happened. Raises
    OperationFailed (after recording it) when a VM could not leave, Conflict when
    another ``enter``/``exit`` of ``host`` runs or HA admission refuses the moves (the
    host is then schedulable again unless an earlier run left it in maintenance)."""
    check_parallel(parallel)
    with host_lock(cluster, host, doing="enter", wait_s=lock_wait_s):
        return _Enter(cluster, host, settings, parallel, shutdown_timeout_s,
                      ops or LibvirtOps(cluster), hooks or Hooks()).run()


class _Enter:
    def __init__(self, cluster: ClusterSpec, host: str, settings: ConvergenceSettings | None,
                 parallel: int, shutdown_timeout_s: float, ops: HostOps,
                 hooks: Hooks) -> None:
        self.cluster, self.host, self.settings = cluster, host, settings
        self.parallel, self.shutdown_timeout_s = parallel, shutdown_timeout_s
        self.ops, self.hooks, self.st = ops, hooks, cluster.state

    def run(self) -> EnterReport:
        t0 = SYSTEM.monotonic()
        host, hooks = self.host, self.hooks

        def mark() -> dict[str, Any]:
            before = host in maintenance_doc(self.st)["hosts"]
            mark_unschedulable(self.cluster, host)
            return {"created": not before}
        marked = hooks.steps.step("mark", mark)
        hooks.progress(5, f"{host} takes no new VMs")

        def plan_now() -> dict[str, Any]:
            closed = set(maintenance_doc(self.st)["hosts"])
            return plan_evacuation(host, self.ops.vms_on(host), self.ops.capacities(),
                                   closed).to_dict()
        plan = EvacuationPlan.from_dict(hooks.steps.step("plan", plan_now))
        entry = _entry(self.st, host)
        recorded = {m["vm"]: m for m in entry.get("moved", []) if isinstance(m, dict)}
        todo = [(vm, to) for vm, to in plan.moves if vm not in recorded]
        try:
            hooks.admit(todo)
        except AhvliteError:
            if marked.get("created"):
                self._unmark_if_untouched()
            raise
        # Recorded: from here on the run goes on (a client not waiting returns here).
        hooks.steps.step(ADMITTED, lambda: True)
        out = EnterReport(host=host, state="entering", left=list(plan.left),
                          failed=[{"vm": v, "reason": r} for v, r in plan.unplaceable])
        out.moved = [recorded[vm] for vm, _ in plan.moves if vm in recorded]
        out.shut_down = [v for v in plan.shutdowns if v in entry.get("shut_down", [])]
        serial = _Serial(hooks.progress, len(plan.moves) + len(plan.shutdowns),
                         done=len(out.moved) + len(out.shut_down))
        serial.say(f"plan: {len(plan.moves)} to migrate ({len(out.moved)} already moved), "
                   f"{len(plan.shutdowns)} pinned to shut down, {len(plan.left)} not running")
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            for f in [pool.submit(self._move, vm, to, out, serial) for vm, to in todo]:
                f.result()
        for vm in plan.shutdowns:
            if vm not in out.shut_down:
                self._shut_down(vm, out, serial)
        out.state = "in_maintenance" if not out.failed else "entering"
        out.took_s = round(SYSTEM.monotonic() - t0, 2)

        def finish(e: dict[str, Any]) -> None:
            e["state"] = out.state
            e["failed"] = out.failed
            e["left"] = out.left
            e["took_s"] = out.took_s
        hooks.guard()
        _update_host(self.st, host, finish)
        if out.failed:
            raise OperationFailed(
                f"{host} is unschedulable but not empty: "
                + "; ".join(f"{f['vm']}: {f['reason']}" for f in out.failed),
                hint=f"fix the cause and run `ahvlite host maintenance enter {host}` "
                     "again, or shut those VMs down")
        hooks.progress(100, f"{host} is in maintenance: {len(out.moved)} migrated, "
                            f"{len(out.shut_down)} pinned shut down")
        return out

    def _unmark_if_untouched(self) -> None:
        """Refused before anything moved: the host is schedulable again, as before."""
        def drop(doc: dict[str, Any]) -> None:
            e = doc.setdefault("hosts", {}).get(self.host)
            if e is not None and not e.get("moved") and not e.get("shut_down"):
                del doc["hosts"][self.host]
        self.st.update(MAINTENANCE_KEY, drop)

    def _record_move(self, entry: dict[str, Any]) -> None:
        def note(e: dict[str, Any]) -> None:
            moved = e.setdefault("moved", [])
            if all(m.get("vm") != entry["vm"] for m in moved if isinstance(m, dict)):
                moved.append(entry)
        _update_host(self.st, self.host, note)

    def _move(self, vm: str, to: str, out: EnterReport, serial: _Serial) -> None:
        host = self.host
        state = self.ops.state_on(host, vm)
        if state is None:
            where = self.ops.where(vm)
            if where is None:
                serial.say(f"{vm} is gone (deleted meanwhile): nothing to move", done=True)
                return
            # Moved by an earlier attempt whose leader died before recording it.
            entry: dict[str, Any] = {"vm": vm, "to": where[0], "downtime_ms": None,
                                     "total_ms": None}
            self._record_move(entry)
            out.moved.append(entry)
            serial.say(f"{vm} already runs on {where[0]}", done=True)
            return
        if state not in migrate.MIGRATABLE_STATES:
            out.left.append(vm)
            serial.say(f"{vm} is {state} now: it stays defined here", done=True)
            return
        serial.say(f"migrating {vm} to {to}")
        try:
            res = self._migrate(vm, to, serial)
        except AhvliteError as exc:
            out.failed.append({"vm": vm, "reason": exc.message})
            serial.say(f"{vm}: could not move: {exc.message}", done=True)
            return
        self.hooks.guard()  # a deposed leader records nothing; the next one finds it moved
        entry = {"vm": vm, "to": res.destination, "downtime_ms": res.downtime_ms,
                 "total_ms": res.total_ms}
        self._record_move(entry)
        out.moved.append(entry)
        serial.say(f"{vm} now runs on {res.destination} (downtime {res.downtime_ms} ms)",
                   done=True)

    def _migrate(self, vm: str, to: str, serial: _Serial) -> migrate.MigrateResult:
        self.hooks.guard()
        try:
            return self.ops.migrate(vm, to, self.settings, self.hooks.on_progress)
        except (migrate.MigrationAborted, OperationFailed):
            raise
        except AhvliteError as exc:
            # The planned host failed a check the plan cannot see (CPU, networks): try
            # the others, most free memory first, each admitted like the plan was.
            serial.say(f"{vm}: {to} refused ({exc.message}); trying another host")
            why = [f"{to}: {exc.message}"]
        closed = set(maintenance_doc(self.st)["hosts"])
        others = sorted((c for c in self.ops.capacities()
                         if c.reachable and c.name not in closed | {self.host, to}),
                        key=lambda c: (-c.free_mib, c.name))
        for c in others:
            try:
                self.hooks.admit([(vm, c.name)])
                self.hooks.guard()
                return self.ops.migrate(vm, c.name, self.settings, self.hooks.on_progress)
            except (migrate.MigrationAborted, OperationFailed):
                raise
            except AhvliteError as exc:
                why.append(f"{c.name}: {exc.message}")
        raise Conflict(f"no host can take {vm}: " + "; ".join(why),
                       hint="add capacity, or end maintenance on a host")

    def _shut_down(self, vm: str, out: EnterReport, serial: _Serial) -> None:
        state = self.ops.state_on(self.host, vm)
        if state not in migrate.MIGRATABLE_STATES:
            if state is not None:  # off already: an earlier attempt shut it down
                out.shut_down.append(vm)
                self._note_shut_down(vm)
            serial.say(f"{vm} is {'off' if state else 'gone'} already", done=True)
            return
        serial.say(f"shutting down pinned {vm}")
        try:
            self.hooks.guard()
            self.ops.shutdown(vm, self.shutdown_timeout_s)
        except AhvliteError as exc:
            out.failed.append({"vm": vm, "reason": exc.message})
            serial.say(f"{vm}: could not shut down: {exc.message}", done=True)
            return
        out.shut_down.append(vm)
        self._note_shut_down(vm)
        serial.say(f"{vm} is shut down", done=True)

    def _note_shut_down(self, vm: str) -> None:
        def note(e: dict[str, Any]) -> None:
            if vm not in e.setdefault("shut_down", []):
                e["shut_down"].append(vm)
        _update_host(self.st, self.host, note)


# -- exit ---------------------------------------------------------------------------

def exit_(cluster: ClusterSpec, host: str, *, restore: bool = False,
          settings: ConvergenceSettings | None = None, parallel: int = DEFAULT_PARALLEL,
          ops: HostOps | None = None, hooks: Hooks | None = None,
          lock_wait_s: float = LOCK_WAIT_S) -> dict[str, Any]:
    """Make ``host`` schedulable again; start the pinned VMs it shut down; with
    ``restore``, migrate the VMs it sent away back (those still running elsewhere, as
    far as HA admission allows)."""
    cluster.host(host)
    check_parallel(parallel)
    # An exit while enter still empties the host is refused (Conflict naming the running
    # enter) rather than cancelling it: enter may be mid-migration, and cutting that off
    # from here could not be clean. The operator waits, or stops enter and then exits.
    with host_lock(cluster, host, doing="exit", wait_s=lock_wait_s):
        return _exit(cluster, host, restore=restore, settings=settings, parallel=parallel,
                     ops=ops or LibvirtOps(cluster), hooks=hooks or Hooks())


def _exit(cluster: ClusterSpec, host: str, *, restore: bool,
          settings: ConvergenceSettings | None, parallel: int, ops: HostOps,
          hooks: Hooks) -> dict[str, Any]:
    st = cluster.state

    def read() -> dict[str, Any]:
        entry = maintenance_doc(st)["hosts"].get(host)
        if entry is None:
            raise NotFound(f"host {host} is not in maintenance",
                           hint="`ahvlite host maintenance show` lists the hosts' states")
        return dict(entry)
    # Read, then drop: a run taken over after the drop still knows what to undo.
    entry = hooks.steps.step("read", read)

    def drop() -> bool:
        def change(doc: dict[str, Any]) -> None:
            doc.setdefault("hosts", {}).pop(host, None)
        st.update(MAINTENANCE_KEY, change)
        return True
    hooks.steps.step("drop", drop)
    hooks.progress(10, f"{host} is schedulable again")
    started: list[str] = []
    returned: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for vm in entry.get("shut_down", []):
        if ops.state_on(host, vm) in migrate.MIGRATABLE_STATES:
            started.append(vm)  # an earlier attempt started it
            continue
        try:
            hooks.guard()
            ops.start(vm)
            started.append(vm)
            hooks.progress(20, f"started pinned {vm}")
        except AhvliteError as exc:
            skipped.append({"vm": vm, "reason": exc.message})
    moved = [m["vm"] for m in entry.get("moved", []) if isinstance(m, dict)]
    if restore and moved:
        serial = _Serial(hooks.progress, len(moved))
        batch = [(vm, host) for vm in moved]
        try:
            hooks.admit(batch)
            together = True
        except AhvliteError:
            together = False  # one at a time, each admitted with the others back already

        def bring_back(vm: str) -> None:
            if ops.state_on(host, vm) in migrate.MIGRATABLE_STATES:
                returned.append({"vm": vm, "from": None, "downtime_ms": None})
                serial.say(f"{vm} is back on {host}", done=True)  # an earlier attempt
                return
            if ops.where(vm) is None:
                skipped.append({"vm": vm, "reason": "it no longer exists"})
                serial.say(f"{vm} is gone", done=True)
                return
            try:
                if not together:
                    hooks.admit([(vm, host)])
                hooks.guard()
                res = ops.migrate(vm, host, settings, hooks.on_progress)
            except AhvliteError as exc:
                # Deleted, stopped or pinned meanwhile, it does not fit any more, or HA
                # admission refuses: it stays where it is, and the caller hears why.
                skipped.append({"vm": vm, "reason": exc.message})
                serial.say(f"{vm} stays where it is: {exc.message}", done=True)
                return
            returned.append({"vm": vm, "from": res.source, "downtime_ms": res.downtime_ms})
            serial.say(f"{vm} is back on {host}", done=True)

        with ThreadPoolExecutor(max_workers=parallel if together else 1) as pool:
            for f in [pool.submit(bring_back, vm) for vm in moved]:
                f.result()
    return {"host": host, "state": "schedulable", "started": started,
            "restored": returned, "not_restored": skipped}
