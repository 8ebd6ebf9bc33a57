"""ADS planner on hand-built clusters: AHV's documented example, smoothing, rules, order."""

from __future__ import annotations

import json

import pytest

from ahvlite.errors import Conflict, InvalidSpec
from ahvlite.sched import demand
from ahvlite.sched.effectiveness import compare
from ahvlite.sched.model import (
    AntiAffinityGroup,
    Host,
    Problem,
    Rules,
    Thresholds,
    Vm,
    VmHostAffinity,
)
from ahvlite.sched.plan import make_plan
from ahvlite.sched.poweron import place_vm, rank

GIB = 1024


def host(name: str, cores: int = 16, mem_gib: int = 64, **kw) -> Host:
    return Host(name, cores * 100.0, mem_gib * GIB, **kw)


def vm(name: str, on: str, mem_gib: float, cpu: float, **kw) -> Vm:
    return Vm(name, on, int(mem_gib * GIB), (cpu,) * 12, **kw)


def ahv_doc_example() -> Problem:
    """Host 1 at 90 % CPU. Neither of its movable VMs fits anywhere as things are; host 3
    has CPU room but no memory until its 8 GB VM moves to host 2 (which has exactly 8 GB
    free but not enough for host 1's VMs). Moving that VM back to host 1 would keep
    host 1 hot, and host 2's VMs are larger than host 3's, so the cheapest plan is the
    documented one: 8 GB VM host 3 -> host 2, then host 1's smaller VM -> host 3."""
    return Problem(
        hosts=(host("host1"), host("host2"), host("host3")),
        vms=(vm("cvm1", "host1", 16, 0, pinned=True),
             vm("h1-small", "host1", 16, 400), vm("h1-large", "host1", 32, 1040),
             vm("cvm2", "host2", 8, 0, pinned=True),
             vm("h2-a", "host2", 24, 100), vm("h2-b", "host2", 24, 100),
             vm("cvm3", "host3", 16, 0, pinned=True),
             vm("h3-8g", "host3", 8, 400), vm("h3-a", "host3", 32, 200)))


@pytest.mark.parametrize("solver", ["cpsat", "heuristic"])
def test_ahv_documented_example_is_the_plan(solver):
    p = make_plan(ahv_doc_example(), solver=solver)
    assert [h.to_dict()["host"] for h in p.hotspots] == ["host1"]
    assert p.hotspots[0].demand_pct == 90.0
    assert [(m.vm, m.source, m.target) for m in p.moves] == [
        ("h3-8g", "host3", "host2"), ("h1-small", "host1", "host3")]
    assert p.memory_moved_mib == 24 * GIB
    assert p.cost_mib == 24 * GIB + 2 * 1024
    assert p.remaining == ()
    assert p.predicted["host1"].cpu_pct == 65.0
    assert p.predicted["host2"].memory_pct == 100.0
    if solver == "cpsat":
        assert p.status == "optimal" and p.bound_mib == p.cost_mib


def test_a_single_spike_does_not_trigger_but_sustained_load_does():
    spike = (20.0,) * 29 + (100.0,)
    assert demand.estimate(spike) < 30
    early_spike = (20.0,) * 10 + (100.0,) + (20.0,) * 19
    assert demand.estimate(early_spike) < 30
    sustained = (20.0,) * 15 + (100.0,) * 15
    assert demand.estimate(sustained) > 95
    # The same at cluster scale: host a at 95 % for one sample only -> no moves.
    hosts = (host("a", cores=1), host("b", cores=1))
    calm = (40.0,) * 29 + (100.0,)  # one sample at 130 % of the host with y
    p = Problem(hosts, (Vm("x", "a", 1024, calm), Vm("y", "a", 2048, (30.0,) * 30)))
    assert make_plan(p).moves == () and make_plan(p).status == "no-hotspot"
    hot = (40.0,) * 10 + (70.0,) * 20
    p2 = Problem(hosts, (Vm("x", "a", 1024, hot), Vm("y", "a", 2048, (30.0,) * 30)))
    moved = make_plan(p2)
    assert [m.vm for m in moved.moves] == ["x"] and moved.remaining == ()


def test_skew_alone_moves_nothing():
    # One host at 80 %, the others idle: very uneven, not contended.
    p = Problem((host("a"), host("b"), host("c")),
                tuple(vm(f"v{i}", "a", 4, 160) for i in range(8)))
    plan = make_plan(p, solver="cpsat")
    assert plan.moves == () and plan.solver == "none" and plan.cost_mib == 0


def test_pinned_and_must_affinity_are_honoured():
    hosts = (host("a", cores=2), host("b", cores=2), host("c", cores=2))
    vms = (vm("pin", "a", 1, 100, pinned=True), vm("m", "a", 1, 60), vm("cheap", "a", 0.5, 60))
    rules = Rules(host_affinity=(VmHostAffinity("r1", ("m", "cheap"), ("a", "c")),))
    for solver in ("cpsat", "heuristic"):
        p = make_plan(Problem(hosts, vms, rules), solver=solver)
        assert [(m.vm, m.target) for m in p.moves] == [("cheap", "c")], solver


def test_should_affinity_prefers_but_never_causes_a_move():
    hosts = (host("a", cores=2), host("b", cores=2), host("c", cores=2))
    vms = (vm("x", "a", 1, 100), vm("y", "a", 1.5, 100), vm("z", "b", 1, 10))
    rules = Rules(host_affinity=(VmHostAffinity("s", ("x", "y", "z"), ("c",), "should"),))
    p = make_plan(Problem(hosts, vms, rules), solver="cpsat")
    assert [(m.vm, m.target) for m in p.moves] == [("x", "c")]
    # z violates its "should" rule but b is not hot: it stays.
    calm = make_plan(Problem(hosts, (vms[0], vms[2]), rules))
    assert calm.moves == ()


def test_anti_affinity_blocks_a_destination():
    hosts = (host("a", cores=2), host("b", cores=2), host("c", cores=2))
    vms = (vm("db1", "a", 1, 120), vm("w", "a", 1, 60), vm("db2", "b", 1, 10),
           vm("big", "c", 63.5, 10))
    rules = Rules(anti_affinity=(AntiAffinityGroup("dbs", ("db1", "db2")),))
    for solver in ("cpsat", "heuristic"):
        p = make_plan(Problem(hosts, vms, rules), solver=solver)
        # c has no memory, b holds db2: only w to b relieves a.
        assert [(m.vm, m.target) for m in p.moves] == [("w", "b")], solver


def test_a_swap_on_full_hosts_takes_a_temporary_hop():
    """a is hot; the only cure swaps a's busy VM with b's idle one, both hosts full in
    memory: one of them hops to c first (room in memory, but c could keep neither: its
    CPU would go above the threshold)."""
    hosts = (host("a", cores=2, mem_gib=8), host("b", cores=4, mem_gib=8),
             host("c", cores=1, mem_gib=16))
    vms = (vm("busy", "a", 8, 190), vm("idle", "b", 8, 20), vm("c-load", "c", 0.5, 80))
    p = make_plan(Problem(hosts, vms), solver="cpsat")
    assert p.remaining == () and p.status == "optimal"
    assert [(m.vm, m.source, m.target, m.temporary) for m in p.moves] == [
        ("busy", "a", "c", True), ("idle", "b", "a", False), ("busy", "c", "b", False)]
    assert p.cost_mib == 3 * (8 * GIB + 1024)


def test_storage_service_hotspot_moves_io_heavy_vm():
    hosts = (Host("a", 800, 16 * GIB, storage_cpu_alloc_pct=400,
                  storage_cpu_history_pct=(200.0,) * 10),
             Host("b", 800, 16 * GIB, storage_cpu_alloc_pct=400,
                  storage_cpu_history_pct=(50.0,) * 10))
    vms = (Vm("io", "a", 2 * GIB, (50.0,) * 10, storage_history_pct=(160.0,) * 10),
           Vm("quiet", "a", GIB, (50.0,) * 10))
    p = make_plan(Problem(hosts, vms))
    assert [h.resource for h in p.hotspots] == ["storage"]
    assert [m.vm for m in p.moves] == ["io"] and p.remaining == ()


def test_unfixable_hotspot_is_reported_not_hidden():
    hosts = (host("a", cores=1), host("b", cores=1))
    vms = (vm("pinned-hog", "a", 1, 99, pinned=True), vm("b-hog", "b", 1, 90))
    p = make_plan(Problem(hosts, vms))
    assert p.moves == () and p.status == "unresolved"
    assert [h.host for h in p.remaining] == ["a", "b"]


def test_rules_naming_removed_hosts_are_ignored_with_a_warning():
    """`host remove` after `ads rules add`: placement and plans keep working."""
    hosts = (host("a"), host("b"), host("c"))
    vms = (vm("busy", "a", 8, 1000), vm("some", "b", 8, 400), vm("peer", "c", 8, 10))
    newvm = vm("new", "", 4, 100)
    part = Rules(host_affinity=(VmHostAffinity("m", ("new",), ("a", "h9")),))
    placed = rank(Problem(hosts, vms, part), newvm)
    assert placed.host == "a"  # the hosts still there still bind
    assert len(placed.warnings) == 1 and "ADS rule m" in placed.warnings[0]
    assert "h9" in placed.warnings[0]
    gone = Rules(host_affinity=(VmHostAffinity("m", ("new",), ("h9",)),))
    placed = rank(Problem(hosts, vms, gone), newvm)
    assert placed.host == "c" and "the rule is ignored" in placed.warnings[0]
    assert rank(Problem(hosts, vms), newvm).warnings == ()
    two = (host("a", cores=2), host("b", cores=2), host("c", cores=2))
    hot = (vm("pin", "a", 1, 100, pinned=True), vm("m", "a", 1, 60), vm("cheap", "a", 0.5, 60))
    stale = Rules(host_affinity=(VmHostAffinity("r1", ("m", "cheap"), ("a", "c", "gone")),))
    for solver in ("cpsat", "heuristic"):
        p = make_plan(Problem(two, hot, stale), solver=solver)
        assert [(m.vm, m.target) for m in p.moves] == [("cheap", "c")], solver
        assert p.to_dict()["warnings"] == list(p.warnings) and "r1" in p.warnings[0]


def test_snapshot_round_trip_and_bad_input():
    prob = ahv_doc_example()
    again = Problem.from_dict(json.loads(json.dumps(prob.to_dict())))
    assert again == prob
    raw = prob.to_dict()
    raw["vms"][1]["memory_mib"] = -1
    with pytest.raises(InvalidSpec) as e:
        Problem.from_dict(raw)
    assert e.value.field == "vms[1].memory_mib" and "from 0" in e.value.allowed
    raw = prob.to_dict()
    raw["vms"][1]["host"] = "host9"
    with pytest.raises(InvalidSpec) as e:
        Problem.from_dict(raw)
    assert e.value.field == "vms[h1-small].host"
    raw = prob.to_dict()
    raw["rules"] = {"host_affinity": [{"name": "r", "vms": ["a"], "hosts": ["h"],
                                       "kind": "maybe"}]}
    with pytest.raises(InvalidSpec) as e:
        Problem.from_dict(raw)
    assert e.value.field == "rules.host_affinity[0].kind"
    with pytest.raises(InvalidSpec):
        make_plan(prob, solver="magic")  # type: ignore[arg-type]


def test_initial_placement_balances_and_follows_rules():
    hosts = (host("a"), host("b"), host("c"))
    vms = (vm("busy", "a", 8, 1000), vm("some", "b", 8, 400), vm("peer", "c", 8, 10))
    newvm = vm("new", "", 4, 100)
    prob = Problem(hosts, vms)
    assert place_vm(prob, newvm) == "c"
    rules = Rules(anti_affinity=(AntiAffinityGroup("g", ("new", "peer")),))
    assert place_vm(Problem(hosts, vms, rules), newvm) == "b"
    must = Rules(host_affinity=(VmHostAffinity("m", ("new",), ("a",)),))
    assert place_vm(Problem(hosts, vms, must), newvm) == "a"
    both = Rules(host_affinity=(VmHostAffinity("m", ("new",), ("c",)),),
                 anti_affinity=(AntiAffinityGroup("g", ("new", "peer")),))
    with pytest.raises(Conflict) as e:
        place_vm(Problem(hosts, vms, both), newvm)
    assert "anti-affinity: peer runs there" in e.value.message
    short = rank(prob, vm("huge", "", 60, 1))
    assert short.host is None and short.only_memory_short
    assert rank(prob, vm("huge", "", 60, 1), need_free_mib=0).host == "c"


def test_effectiveness_compares_prediction_with_observation():
    plan = make_plan(ahv_doc_example()).to_dict()
    eff = compare(plan, {"host1": 70.0, "host2": 20.0, "host3": 40.0})
    by = {h.host: h for h in eff.hosts}
    assert by["host1"].predicted_cpu_pct == 65.0 and by["host1"].error_pct == 5.0
    assert eff.relieved == ("host1",) and eff.still_hot == ()
    worse = compare(plan, {"host1": 88.0, "host2": 20.0, "host3": 40.0})
    assert worse.still_hot == ("host1",) and worse.max_abs_error_pct == 23.0
    # A hotspot not observed now (gone, not answering) is unknown, never "relieved".
    gone = compare(plan, {"host2": 20.0, "host3": 40.0})
    assert gone.relieved == () and gone.still_hot == () and gone.unknown == ("host1",)
    # Judged by the threshold the plan used for it, not the caller's current one.
    strict = dict(plan, hotspots=[dict(h, threshold_pct=60.0) for h in plan["hotspots"]])
    eff = compare(strict, {"host1": 70.0, "host2": 20.0, "host3": 40.0}, threshold_pct=85.0)
    assert eff.still_hot == ("host1",) and eff.threshold_pct == {"host1": 60.0}
    with pytest.raises(InvalidSpec):
        compare({"moves": []}, {})


def test_thresholds_are_configurable():
    hosts = (host("a", cores=1), host("b", cores=1))
    vms = (vm("x", "a", 1, 50), vm("y", "a", 0.5, 30))
    assert make_plan(Problem(hosts, vms)).moves == ()
    strict = make_plan(Problem(hosts, vms, thresholds=Thresholds(cpu_pct=60)))
    assert [m.vm for m in strict.moves] == ["y"]


def test_only_cpsat_imports_ortools_and_the_planner_does_no_io():
    import re
    from pathlib import Path

    import ahvlite

    root = Path(ahvlite.__file__).parent
    imports = re.compile(r"^\s*(?:from|import) (\S+)", re.M)
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if any(m.startswith("ortools") for m in imports.findall(p.read_text())))
    assert users == ["sched/cpsat.py"]
    io_modules = ("os", "pathlib", "socket", "subprocess", "time", "libvirt", "ahvlite.virt",
                  "ahvlite.cluster", "ahvlite.controller.coord", "ahvlite.remote",
                  "ahvlite.net")
    # The stats history reads virt's counter records (plain data), not a connection.
    data_only = ("ahvlite.virt.stats",)
    for p in (root / "sched").glob("*.py"):
        mods = [m for m in imports.findall(p.read_text()) if m not in data_only]
        assert not [m for m in mods if m.split(".")[0] in io_modules or
                    any(m.startswith(x) for x in io_modules)], p.name


def test_a_swap_without_room_anywhere_is_refused_clearly():
    hosts = (host("a", cores=2, mem_gib=8), host("b", cores=4, mem_gib=8))
    vms = (vm("busy", "a", 8, 190), vm("idle", "b", 8, 20))
    p = make_plan(Problem(hosts, vms), solver="cpsat")
    assert p.moves == () and p.status == "unresolved" and p.solver == "heuristic"
    assert "wait on each other" in p.note and "no host has room" in p.note
    assert [h.host for h in p.remaining] == ["a"]
