"""Property tests of the ADS planner: whatever the cluster, a plan never breaks memory,
pins, must-affinity or anti-affinity at any step; a plan that claims to resolve the
hotspots leaves no host above its threshold; no hotspot means no moves.

The checks below recompute everything from the Problem on their own (demand from
``demand.estimate``, loads by summing), not from the planner's internal state.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ahvlite.sched.demand import estimate
from ahvlite.sched.model import (
    AntiAffinityGroup,
    Host,
    Problem,
    Rules,
    Vm,
    VmHostAffinity,
)
from ahvlite.sched.plan import Plan, make_plan

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    n_hosts = draw(st.integers(2, 5))
    hosts = []
    for i in range(n_hosts):
        hosts.append(Host(f"h{i}", draw(st.sampled_from([100.0, 200.0, 400.0])),
                          draw(st.sampled_from([2048, 4096, 8192])),
                          schedulable=draw(st.booleans()) or i == 0))
    used = {h.name: 0 for h in hosts}
    vms = []
    for j in range(draw(st.integers(1, 10))):
        h = hosts[draw(st.integers(0, n_hosts - 1))]
        mem = draw(st.sampled_from([256, 512, 1024, 2048]))
        if used[h.name] + mem > h.memory_mib:
            continue  # the cluster as it is fits in memory
        used[h.name] += mem
        base = draw(st.floats(0, 160))
        hist = tuple(draw(st.lists(st.floats(0, 1.5 * base + 1), min_size=1, max_size=8)))
        vms.append(Vm(f"v{j}", h.name, mem, hist, pinned=draw(st.integers(0, 5)) == 0))
    names = [v.name for v in vms]
    ha, aa = [], []
    if len(names) >= 2 and draw(st.booleans()):
        chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
        allowed = draw(st.lists(st.sampled_from([h.name for h in hosts]), min_size=1,
                                max_size=n_hosts, unique=True))
        ha.append(VmHostAffinity("must", tuple(chosen), tuple(allowed),
                                 draw(st.sampled_from(["must", "should"]))))
    if len(names) >= 2 and draw(st.booleans()):
        group = draw(st.lists(st.sampled_from(names), min_size=2, max_size=4, unique=True))
        aa.append(AntiAffinityGroup("anti", tuple(group)))
    return Problem(tuple(hosts), tuple(vms), Rules(tuple(ha), tuple(aa)))


def cpu_loads(p: Problem, where: dict[str, str]) -> dict[str, float]:
    loads = {h.name: 0.0 for h in p.hosts}
    for v in p.vms:
        loads[where[v.name]] += estimate(v.cpu_history_pct)
    return loads


def hot_hosts(p: Problem, where: dict[str, str]) -> set[str]:
    loads = cpu_loads(p, where)
    return {h.name for h in p.hosts
            if loads[h.name] > h.cpu_capacity_pct * p.thresholds.cpu_pct / 100 + 1e-6}


def check_every_step(p: Problem, plan: Plan) -> dict[str, str]:
    where = {v.name: v.host for v in p.vms}
    vm = {v.name: v for v in p.vms}
    host = {h.name: h for h in p.hosts}
    must = {}
    for r in p.rules.host_affinity:
        if r.kind == "must":
            for n in r.vms:
                must[n] = must.get(n, set(r.hosts)) & set(r.hosts)
    group_start = {}
    for g in p.rules.anti_affinity:
        for h in host:
            group_start[g.name, h] = sum(1 for n in g.vms if n in where and where[n] == h)
    for m in plan.moves:
        assert where[m.vm] == m.source, "a move starts where the VM is"
        assert not vm[m.vm].pinned, f"pinned {m.vm} moved"
        assert host[m.target].schedulable, f"{m.vm} moved to unschedulable {m.target}"
        if m.vm in must:
            assert m.target in must[m.vm], f"{m.vm} left its must hosts"
        where[m.vm] = m.target
        used = sum(v.memory_mib for v in p.vms if where[v.name] == m.target)
        assert used <= host[m.target].memory_mib, f"memory over on {m.target}"
        for g in p.rules.anti_affinity:
            n = sum(1 for x in g.vms if x in where and where[x] == m.target)
            assert n <= max(1, group_start[g.name, m.target]), "anti-affinity broken"
    return where


@SETTINGS
@given(problems(), st.sampled_from(["cpsat", "heuristic"]))
def test_plans_never_break_capacity_pins_or_rules(p, solver):
    plan = make_plan(p, solver=solver, time_limit_s=2)
    where = check_every_step(p, plan)
    start = {v.name: v.host for v in p.vms}
    before = hot_hosts(p, start)
    after = hot_hosts(p, where)
    if not before:
        assert plan.moves == () and plan.status == "no-hotspot"
    if plan.status in ("optimal", "feasible", "heuristic"):
        assert not after, f"{solver} claims {plan.status} but {after} are hot"
    assert {h.host for h in plan.remaining} == after
    if solver == "heuristic":
        # It only moves VMs to hosts that stay under their thresholds.
        assert after <= before
    cost = sum(m.memory_mib + p.move_penalty_mib for m in plan.moves)
    assert plan.cost_mib >= cost  # a move to a host outside "should" costs extra


@SETTINGS
@given(problems())
def test_cpsat_resolves_whatever_the_heuristic_resolves_and_costs_no_more(p):
    h = make_plan(p, solver="heuristic")
    c = make_plan(p, solver="cpsat", time_limit_s=5)
    if h.moves and not h.remaining:
        assert not c.remaining
        if c.status == "optimal" and not any(m.temporary for m in c.moves):
            assert c.cost_mib <= h.cost_mib
            assert c.bound_mib == c.cost_mib


@SETTINGS
@given(problems(), st.sampled_from([256, 1024, 4096]), st.data())
def test_power_on_placement_respects_memory_and_rules(p, mem, data):
    from ahvlite.sched.poweron import rank

    names = [v.name for v in p.vms]
    hosts = [h.name for h in p.hosts]
    must = data.draw(st.lists(st.sampled_from(hosts), min_size=1, unique=True))
    peers = data.draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    rules = Rules((VmHostAffinity("m", ("new",), tuple(must)),),
                  (AntiAffinityGroup("a", ("new", *peers)),) if peers else ())
    p = Problem(p.hosts, p.vms, rules)
    placed = rank(p, Vm("new", "", mem, (50.0,)))
    used = {h: sum(v.memory_mib for v in p.vms if v.host == h) for h in hosts}
    ok = {h.name for h in p.hosts if h.schedulable and h.name in must
          and h.memory_mib - used[h.name] >= mem
          and not any(v.host == h.name for v in p.vms if v.name in peers)}
    assert set(placed.ranked) == ok
    assert placed.host == (placed.ranked[0] if ok else None)
    assert set(placed.excluded) == set(hosts) - ok
