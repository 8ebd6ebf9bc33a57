"""The exact planner: OR-Tools CP-SAT picks the cheapest target placement.

The only module that imports ``ortools``. One boolean per (VM, host it may be on).
Hard: each VM on exactly one host, memory fits every host at the end, anti-affinity
caps. Soft, but weighted above every possible migration cost: CPU and storage-service
load above the thresholds (``overflow``), so the solver first removes as much contention
as it can and only then minimises cost = memory moved + penalty per move (+ the penalty
again for a move to a host outside the VM's "should" set). Staying costs nothing, so
with no hotspot the optimum moves nothing.

The order of the moves (and any temporary hop a cycle needs) is :mod:`plan`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass

from ortools.sat.python import cp_model

from ahvlite.sched.instance import Instance

SCALE = 10  # CPU in tenths of a percent of a core: CP-SAT wants integers


@dataclass(frozen=True)
class CpResult:
    target: tuple[int, ...]  # host index per VM
    optimal: bool
    cost_mib: int  # of the target placement (single moves)
    overflow: int  # scaled CPU + storage load above thresholds at the target
    bound_mib: float | None  # lower bound on the cost of any plan with that overflow


def _dot(variables: list[cp_model.IntVar], coefs: list[int]) -> cp_model.LinearExpr:
    return cp_model.LinearExpr.weighted_sum(variables, coefs)


def solve(inst: Instance, *, time_limit_s: float = 5.0, workers: int = 2,
          seed: int = 0) -> CpResult | None:
    """The best target placement found in ``time_limit_s``, or None (no solution)."""
    m = cp_model.CpModel()
    nh = inst.n_hosts
    x: dict[tuple[int, int], cp_model.IntVar] = {}
    on_host: list[list[int]] = [[] for _ in range(nh)]  # movable VMs that may be there
    fixed_cpu, fixed_sto, fixed_mem = [0] * nh, [0] * nh, [0] * nh
    cpu = [round(c * SCALE) for c in inst.cpu]
    sto = [round(s * SCALE) for s in inst.storage]
    cost_terms = []
    max_cost = 0
    for v in range(inst.n_vms):
        hosts = sorted(inst.allowed[v])
        if len(hosts) == 1:
            h = hosts[0]
            fixed_cpu[h] += cpu[v]
            fixed_sto[h] += sto[v]
            fixed_mem[h] += inst.mem[v]
            continue
        for h in hosts:
            x[v, h] = m.new_bool_var(f"x{v}_{h}")
            on_host[h].append(v)
            c = inst.dest_cost(v, h)
            if c:
                cost_terms.append(c * x[v, h])
        max_cost += max(inst.dest_cost(v, h) for h in hosts)
        m.add_exactly_one(x[v, h] for h in hosts)
        m.add_hint(x[v, inst.start[v]], 1)
        for h in hosts:
            if h != inst.start[v]:
                m.add_hint(x[v, h], 0)
    start_mem = [0] * nh
    for v, h in enumerate(inst.start):
        start_mem[h] += inst.mem[v]
    overflow = []
    for h in range(nh):
        if not on_host[h]:
            continue  # nothing here can move: its load is a constant
        # A host already above its memory (overcommitted) may keep what it has.
        cap = max(inst.mem_cap[h], start_mem[h])
        here = [x[v, h] for v in on_host[h]]
        m.add(_dot(here, [inst.mem[v] for v in on_host[h]]) + fixed_mem[h] <= cap)
        load = _dot(here, [cpu[v] for v in on_host[h]]) + fixed_cpu[h]
        top = sum(cpu[v] for v in on_host[h]) + fixed_cpu[h]
        limit = int(inst.cpu_limit[h] * SCALE)
        if top > limit:
            over = m.new_int_var(0, top - limit, f"cpu_over{h}")
            m.add(load - over <= limit)
            overflow.append(over)
        lim = inst.sto_limit[h]
        if lim is not None:
            base = round(inst.sto_base[h] * SCALE)
            sload = _dot(here, [sto[v] for v in on_host[h]]) + fixed_sto[h] + base
            stop = sum(sto[v] for v in on_host[h]) + fixed_sto[h] + base
            slimit = int(lim * SCALE)
            if stop > slimit:
                sover = m.new_int_var(0, stop - slimit, f"sto_over{h}")
                m.add(sload - sover <= slimit)
                overflow.append(sover)
    for g, members in enumerate(inst.groups):
        for h in range(nh):
            vars_ = [x[v, h] for v in members if (v, h) in x]
            fixed = sum(1 for v in members if (v, h) not in x and inst.start[v] == h)
            if vars_ and len(vars_) + fixed > inst.group_cap(g, h):
                m.add(sum(vars_) + fixed <= inst.group_cap(g, h))
    weight = max_cost + 1  # one unit of overflow outweighs every possible move
    m.minimize(weight * sum(overflow) + sum(cost_terms))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    status = solver.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    target = list(inst.start)
    for (v, h), var in x.items():
        if solver.boolean_value(var):
            target[v] = h
    over_val = int(sum(solver.value(o) for o in overflow))
    cost = sum(inst.dest_cost(v, target[v]) for v in range(inst.n_vms))
    optimal = status == cp_model.OPTIMAL
    bound: float | None = float(cost) if optimal else None
    if not optimal and over_val == 0:
        # Any plan has objective >= the bound; one without overflow has cost = objective.
        bound = max(0.0, float(solver.best_objective_bound))
    return CpResult(tuple(target), optimal, cost, over_val, bound)
