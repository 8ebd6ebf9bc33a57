"""The leader's ADS loop: every ``interval_s`` plan on the collected stats, then run the
plan's migrations as ``vm.migrate`` tasks, one after another.

The moves of a plan are ordered (a later one may need the room an earlier one frees),
so the next task is submitted only when the previous one succeeded; a failed or
cancelled move drops the rest of the plan, and the next round plans afresh from what
the cluster is then. Each round's plan goes to ``ads/last-plan`` through the fence, and
one with moves also to ``ads/last-moving-plan`` (what ``ads effectiveness`` checks).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from ahvlite.clock import SYSTEM, Clock
from ahvlite.controller.coord.api import Coordinator, NotLeader, Op, Put
from ahvlite.controller.periodic import Periodic
from ahvlite.controller.tasks import TaskState, TaskStore
from ahvlite.errors import AhvliteError, NotFound
from ahvlite.sched.model import Problem
from ahvlite.sched.plan import Move, Plan, SolverChoice, make_plan

log = logging.getLogger(__name__)

LAST_PLAN_KEY = "ads/last-plan"  # every round's plan
LAST_MOVING_KEY = "ads/last-moving-plan"  # the newest plan that moved VMs
MIGRATE_KIND = "vm.migrate"


class AdsService:
    def __init__(self, coord: Coordinator, snapshot: Callable[[], Problem], *,
                 interval_s: float = 900.0, first_delay_s: float | None = None,
                 poll_s: float = 2.0, clock: Clock = SYSTEM,
                 solver: SolverChoice = "auto",
                 time_limit_s: float = 5.0,
                 admit: Callable[[list[tuple[str, str]]], None] = lambda _moves: None,
                 ) -> None:
        self.coord = coord
        self.admit = admit
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.poll_s = poll_s
        self.clock = clock
        self.solver: SolverChoice = solver
        self.time_limit_s = time_limit_s
        self.store = TaskStore(coord, clock)
        # The first round waits (default: one interval) so the stats have a history.
        self.next_run = clock.time() + (interval_s if first_delay_s is None else first_delay_s)
        self.queue: list[Move] = []
        self.current: str | None = None  # id of the vm.migrate task in flight
        self.last_plan: Plan | None = None
        self.loop: Periodic | None = None

    def start(self) -> None:
        self.loop = Periodic("ads", self._step_while_leading, self.poll_s, clock=self.clock)
        self.loop.start()

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.stop()

    def _step_while_leading(self) -> None:
        try:
            self.step()
        except NotLeader:  # the loop ends with the term; the next leader runs its own
            if self.loop is not None:
                self.loop.stopped.set()

    def step(self) -> None:
        """Advance: watch the move in flight, submit the next, or plan when it is time."""
        if self.current is not None:
            try:
                task, _ = self.store.load(self.current)
            except NotFound:
                # Deleted under us: its outcome is unknown, so the rest of the plan
                # (ordered on it) is dropped and the next round plans afresh.
                log.warning("ads: move task %s is gone; the rest of the plan is dropped",
                            self.current)
                self.current = None
                self.queue.clear()
                return
            if not task.terminal:
                return
            self.current = None
            if task.state != TaskState.SUCCEEDED:
                log.warning("ads: move %s %s (%s); the rest of the plan is dropped",
                            task.params.get("name"), task.state, task.error or task.message)
                self.queue.clear()
        if self.queue:
            self._submit(self.queue.pop(0))
            return
        if self.clock.time() < self.next_run:
            return
        self.next_run = self.clock.time() + self.interval_s
        plan = make_plan(self.snapshot(), solver=self.solver, time_limit_s=self.time_limit_s)
        self.last_plan = plan
        refused = None
        if plan.moves:
            try:
                self.admit([(m.vm, m.target) for m in plan.moves])
            except AhvliteError as exc:
                refused = exc.message
        record = json.dumps({"at": self.clock.time(), **plan.to_dict(),
                             **({"refused": refused} if refused else {})}).encode()
        puts: list[Op] = [Put(LAST_PLAN_KEY, record)]
        if refused is not None:
            self.coord.fenced(puts)
            log.warning("ads: %d move(s) refused: %s", len(plan.moves), refused)
            return
        if plan.moves:
            puts.append(Put(LAST_MOVING_KEY, record))
        self.coord.fenced(puts)
        if plan.moves:
            log.warning("ads: %d hotspot(s); %d move(s), cost %d MiB (%s)",
                        len(plan.hotspots), len(plan.moves), plan.cost_mib, plan.solver)
            self.queue = list(plan.moves)
            self._submit(self.queue.pop(0))

    def _submit(self, move: Move) -> None:
        params: dict[str, Any] = {"name": move.vm, "to": move.target}
        self.current = self.store.submit(MIGRATE_KIND, params).id
