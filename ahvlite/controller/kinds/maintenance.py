"""Maintenance task kinds: empty a host (``maintenance.enter``), bring it back
(``maintenance.exit``). The run is the cluster layer's (``cluster.maintenance``); the
kind adds the task's recorded steps, the leadership check before each change on a
host, the HA admission of every move, and progress per VM."""

from __future__ import annotations

import threading
from typing import Any

from pydantic import Field

from ahvlite.controller.kinds.base import HP, HostKind, HostParams, Kind
from ahvlite.controller.tasks import TaskContext, TaskState, decode
from ahvlite.errors import Conflict

ENTER = "maintenance.enter"
EXIT = "maintenance.exit"
# A resumed run waits this long for the host's lock: the dead leader's store session
# (and with it the lock) goes within its session timeout.
RESUME_LOCK_WAIT_S = 30.0
PROGRESS_EVERY_S = 1.0  # a migration's progress reaches the task record at most this often

PARALLEL = Field(2, ge=1, le=16, description="migrations at a time")
MAX_DOWNTIME = Field(300, ge=1, le=60_000, description="the stun window cap in ms")


class EnterParams(HostParams):
    parallel: int = PARALLEL
    max_downtime_ms: int = MAX_DOWNTIME
    shutdown_timeout_s: float = Field(60, gt=0, le=3600,
                                      description="wait for a pinned VM's clean shutdown")


class ExitParams(HostParams):
    restore: bool = False
    parallel: int = PARALLEL
    max_downtime_ms: int = MAX_DOWNTIME


def running_runs(store: Any, kind: str, host: str, *, besides: str = "") -> list[str]:
    """Ids of tasks of ``kind`` for ``host`` that have not ended (queued, running, or
    left running by a dead leader), except ``besides``."""
    out = []
    for task_id, v in sorted(store.children("tasks").items()):
        task, problem = decode(task_id, v.value)
        if (problem is None and task.kind == kind and task.id != besides
                and task.params.get("host") == host
                and task.state in (TaskState.QUEUED, TaskState.RUNNING)):
            out.append(task.id)
    return out


class _Reporter:
    """Task progress from the run's threads: one writer at a time, migrations'
    own progress at most every :data:`PROGRESS_EVERY_S` per VM."""

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.pct = 0
        self._mu = threading.Lock()
        self._last: dict[str, float] = {}

    def progress(self, pct: int, message: str) -> None:
        with self._mu:
            self.pct = max(self.pct, pct)
            self.ctx.progress(self.pct, message)

    def migration(self, p: Any) -> None:
        now = self.ctx.clock.monotonic()
        if now - self._last.get(p.vm, 0.0) < PROGRESS_EVERY_S:
            return
        self._last[p.vm] = now
        total = p.data_total_bytes or 0
        done = total - (p.data_remaining_bytes or 0)
        copied = f"{100 * done // total}% copied, " if total else ""
        self.progress(self.pct, f"migrating {p.vm} to {p.destination}: {copied}"
                                f"iteration {p.iteration}"
                                + (", post-copy" if p.postcopy else ""))


class _Base(HostKind[HP]):
    def ops(self, cluster: Any) -> Any:
        """The hosts as the run reaches them (a test gives a simulated cluster)."""
        from ahvlite.cluster.maintenance import LibvirtOps

        return LibvirtOps(cluster)

    def hooks(self, ctx: TaskContext, cluster: Any) -> Any:
        from ahvlite.cluster.maintenance import Hooks
        from ahvlite.controller.ha.inventory import check_moves

        rep = _Reporter(ctx)
        return Hooks(steps=ctx, guard=ctx.check_leader,
                     admit=lambda moves: check_moves(cluster, moves),
                     progress=rep.progress, on_progress=rep.migration)


class MaintenanceEnter(_Base[EnterParams]):
    """``maintenance.enter``: mark the host unschedulable, plan, live-migrate its VMs
    (``parallel`` at a time, each admitted by HA), shut its pinned VMs down.

    The task holds the host's maintenance lock for the whole run. Resumed by a new
    leader, it keeps the recorded plan and moves only what has not moved: VMs the
    maintenance document lists are done, and a VM found running elsewhere already (the
    dead leader's migration finished, its record did not) is recorded, not moved again.
    """

    name = ENTER
    Params = EnterParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import maintenance
        from ahvlite.cluster.convergence import ConvergenceSettings

        p: EnterParams = self.params(ctx)
        cluster = self.cluster()
        self.host("host", p.host)
        others = running_runs(cluster.state.store, ENTER, p.host, besides=ctx.task.id)
        if others:
            raise Conflict(f"another `maintenance enter` of {p.host} is still running "
                           f"(task {others[0]})",
                           hint=f"`ahvlite task wait {others[0]}` follows it")
        ctx.progress(1, f"entering maintenance of {p.host}")
        report = maintenance.enter(
            cluster, p.host, settings=ConvergenceSettings(max_downtime_ms=p.max_downtime_ms),
            parallel=p.parallel, shutdown_timeout_s=p.shutdown_timeout_s,
            ops=self.ops(cluster), hooks=self.hooks(ctx, cluster),
            lock_wait_s=RESUME_LOCK_WAIT_S if ctx.task.attempts > 1
            else maintenance.LOCK_WAIT_S)
        return report.to_dict()


class MaintenanceExit(_Base[ExitParams]):
    """``maintenance.exit``: the host is schedulable again, the pinned VMs maintenance
    shut down start, and with ``restore`` the VMs it moved away come back (each move
    admitted by HA; one refused stays where it is, with the reason).

    Refused (Conflict) while a ``maintenance.enter`` of the host has not ended. Resumed
    by a new leader, it keeps what it read of the document before dropping the entry,
    counts VMs already running (started) or already back (restored) as done."""

    name = EXIT
    Params = ExitParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import maintenance
        from ahvlite.cluster.convergence import ConvergenceSettings

        p: ExitParams = self.params(ctx)
        cluster = self.cluster()
        self.host("host", p.host)
        entering = running_runs(cluster.state.store, ENTER, p.host)
        if entering:
            raise Conflict(f"cannot exit maintenance of {p.host}: `maintenance enter` of "
                           f"{p.host} is still running (task {entering[0]})",
                           hint=f"wait for it (`ahvlite task wait {entering[0]}`), or "
                                f"cancel it first (`ahvlite task cancel {entering[0]}`)")
        ctx.progress(1, f"leaving maintenance of {p.host}")
        return maintenance.exit_(
            cluster, p.host, restore=p.restore,
            settings=ConvergenceSettings(max_downtime_ms=p.max_downtime_ms),
            parallel=p.parallel, ops=self.ops(cluster), hooks=self.hooks(ctx, cluster),
            lock_wait_s=RESUME_LOCK_WAIT_S if ctx.task.attempts > 1
            else maintenance.LOCK_WAIT_S)


KINDS: tuple[type[Kind[Any]], ...] = (MaintenanceEnter, MaintenanceExit)
