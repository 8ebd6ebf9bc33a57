"""Plans: migrations in an order whose every step is feasible, with cost and prediction.

:func:`make_plan` is the planner's entry point. No hotspot, no moves: skew alone never
moves anything. Otherwise CP-SAT (small and mid-sized clusters) or the heuristic (large
ones, or when CP-SAT finds nothing or its placement cannot be ordered) decides.

Ordering a target placement: a move runs once its destination has the memory (and no
anti-affinity clash) at that moment, so a move that needs room freed by another comes
after it. When the remaining moves wait on each other in a cycle (a swap on two full
hosts), one VM hops to a temporary host with room first, which costs one more move; if
no host can take any of them, the placement is refused (:class:`Unorderable`) and the
heuristic plans instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ahvlite.errors import InvalidSpec, OperationFailed
from ahvlite.sched import cpsat, heuristic
from ahvlite.sched.hotspot import Hotspot, Utilization, hotspots, utilization
from ahvlite.sched.instance import Instance, Loads, build
from ahvlite.sched.model import Problem

SolverChoice = Literal["auto", "cpsat", "heuristic"]
SOLVERS = ("auto", "cpsat", "heuristic")
# Above this many movable VMs "auto" goes straight to the heuristic: CP-SAT's model grows
# with VMs x hosts and the answer is wanted in about a second.
CPSAT_MAX_VMS = 300


class Unorderable(OperationFailed):
    """A target placement whose moves cannot be ordered with every step feasible."""


@dataclass(frozen=True)
class Move:
    vm: str
    source: str
    target: str
    memory_mib: int
    temporary: bool = False  # a hop that breaks a cycle; the VM moves on later

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "source": self.source, "target": self.target,
                "memory_mib": self.memory_mib, "temporary": self.temporary}


@dataclass(frozen=True)
class Plan:
    moves: tuple[Move, ...]
    cost_mib: int  # memory moved + penalty per move
    memory_moved_mib: int
    bound_mib: float | None  # CP-SAT's lower bound on the cost (None: heuristic)
    solver: str  # none, cpsat, heuristic
    status: str  # no-hotspot, optimal, feasible, partial, unresolved
    hotspots: tuple[Hotspot, ...]  # before
    remaining: tuple[Hotspot, ...]  # after the plan (empty when it resolves all)
    predicted: dict[str, Utilization] = field(default_factory=dict)
    note: str = ""
    warnings: tuple[str, ...] = ()  # rules naming hosts that are gone (ignored)

    def to_dict(self) -> dict[str, Any]:
        return {"moves": [m.to_dict() for m in self.moves], "cost_mib": self.cost_mib,
                "memory_moved_mib": self.memory_moved_mib, "bound_mib": self.bound_mib,
                "solver": self.solver, "status": self.status,
                "hotspots": [h.to_dict() for h in self.hotspots],
                "remaining": [h.to_dict() for h in self.remaining],
                "predicted": {k: u.to_dict() for k, u in self.predicted.items()},
                "note": self.note, "warnings": list(self.warnings)}


def order(inst: Instance, target: list[int] | tuple[int, ...]) -> list[tuple[int, int]]:
    """Steps (vm, host) that take the cluster from now to ``target``, each feasible."""
    loads = Loads(inst)
    pending = {v: t for v, t in enumerate(target) if t != inst.start[v]}
    steps: list[tuple[int, int]] = []
    hops = 0
    while pending:
        progressed = False
        for v in sorted(pending):
            t = pending[v]
            if loads.mem_fits(v, t) and loads.group_ok(v, t):
                loads.move(v, t)
                steps.append((v, t))
                del pending[v]
                progressed = True
        if progressed:
            continue
        # Every remaining move waits on another: hop the cheapest VM that can go
        # somewhere else for now.
        best: tuple[int, int, int] | None = None
        for v in pending:
            for h in inst.allowed[v]:
                if h != pending[v] and loads.can_receive(v, h):
                    key = (inst.move_cost[v], v, h)
                    if best is None or key < best:
                        best = key
        if best is None or hops >= len(target):
            names = sorted(inst.vm_names[v] for v in pending)
            raise Unorderable(f"the moves of {', '.join(names)} wait on each other and no "
                              "host has room for a temporary hop")
        _, v, h = best
        loads.move(v, h)
        steps.append((v, h))
        hops += 1
    return steps


def replay(inst: Instance, steps: list[tuple[int, int]]) -> tuple[list[Move], Loads]:
    """Apply ``steps`` checking each one; the moves and the final loads."""
    loads = Loads(inst)
    moves = []
    last = {v: i for i, (v, _) in enumerate(steps)}  # a VM's last step is its destination
    for i, (v, t) in enumerate(steps):
        if not loads.can_receive(v, t):
            raise Unorderable(f"step {i + 1}: {inst.vm_names[v]} cannot move to "
                              f"{inst.host_names[t]} at that point")
        moves.append(Move(inst.vm_names[v], inst.host_names[loads.where[v]],
                          inst.host_names[t], inst.mem[v], temporary=last[v] != i))
        loads.move(v, t)
    return moves, loads


def make_plan(problem: Problem, *, solver: SolverChoice = "auto", time_limit_s: float = 5.0,
              workers: int = 2) -> Plan:
    """The cheapest plan the chosen solver finds that relieves the hotspots."""
    plan = _make_plan(problem, solver, time_limit_s, workers)
    warnings = problem.rule_warnings()
    return replace(plan, warnings=warnings) if warnings else plan


def _make_plan(problem: Problem, solver: SolverChoice, time_limit_s: float,
               workers: int) -> Plan:
    if solver not in SOLVERS:
        raise InvalidSpec("solver", solver, ", ".join(SOLVERS))
    if time_limit_s <= 0:
        raise InvalidSpec("time_limit_s", time_limit_s, "a number of seconds above 0")
    inst = build(problem)
    now = Loads(inst)
    before = tuple(hotspots(now))
    if not before:
        return Plan((), 0, 0, 0.0, "none", "no-hotspot", (), (), utilization(now),
                    "no host is above its thresholds: nothing moves")
    movable = sum(1 for v in range(inst.n_vms) if inst.movable(v))
    use_cpsat = solver == "cpsat" or (solver == "auto" and movable <= CPSAT_MAX_VMS)
    note = ""
    fast: Plan | None = None
    if solver != "cpsat":
        fast = _finish(inst, heuristic.solve(inst), before, "heuristic", "heuristic", None, "")
    if use_cpsat:
        result = cpsat.solve(inst, time_limit_s=time_limit_s, workers=workers)
        if result is None:
            note = f"CP-SAT found no plan in {time_limit_s:g} s; the heuristic planned"
        else:
            try:
                steps = order(inst, result.target)
            except Unorderable as exc:
                note = f"{exc.message}; the heuristic planned"
            else:
                status = "optimal" if result.optimal else "feasible"
                exact = _finish(inst, steps, before, "cpsat", status, result.bound_mib, note)
                # CP-SAT's optimum is over end states; a temporary hop or a time limit
                # can leave the heuristic's plan cheaper. Both are feasible: take the
                # one leaving less contention, then the cheaper (the bound still holds).
                if fast is None or _rank(exact) <= _rank(fast):
                    return exact
                return replace(fast, bound_mib=result.bound_mib,
                               note="the heuristic's plan is cheaper than CP-SAT's "
                                    f"({exact.cost_mib} MiB)")
    if fast is None:
        fast = _finish(inst, heuristic.solve(inst), before, "heuristic", "heuristic", None, "")
    return replace(fast, note=note) if note else fast


def _rank(plan: Plan) -> tuple[float, int]:
    left = sum(h.demand_pct - h.threshold_pct for h in plan.remaining)
    return round(left, 6), plan.cost_mib


def _finish(inst: Instance, steps: list[tuple[int, int]], before: tuple[Hotspot, ...],
            solver: str, status: str, bound: float | None, note: str) -> Plan:
    moves, loads = replay(inst, steps)
    after = tuple(hotspots(loads))
    cost = sum(inst.dest_cost(v, t) if t != inst.start[v] else inst.move_cost[v]
               for v, t in steps)
    if after:
        status = "partial" if moves else "unresolved"
    return Plan(tuple(moves), cost, sum(m.memory_mib for m in moves), bound, solver, status,
                before, after, utilization(loads), note)
