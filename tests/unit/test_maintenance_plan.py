"""Maintenance mode: the pure move plan and the state that survives CLI restarts (the
CLI through the API, and a run resumed by a new leader: tests/functional)."""

from __future__ import annotations

import pytest

from ahvlite.cluster import maintenance
from ahvlite.cluster.maintenance import VmOnHost, plan_evacuation
from ahvlite.cluster.schedulable import unschedulable_hosts
from ahvlite.errors import Conflict, NotFound
from ahvlite.sched.capacity import HostCapacity
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from tests.stores import in_store, sqlite_state


def caps(**free: int) -> list[HostCapacity]:
    return [HostCapacity(n, 8192, f) for n, f in free.items()]


def test_biggest_first_each_to_most_free_memory_after_the_moves_planned():
    vms = [VmOnHost("a", "running", 1024, False), VmOnHost("b", "running", 3072, False),
           VmOnHost("c", "running", 2048, False)]
    plan = plan_evacuation("h1", vms, caps(h1=0, h2=4096, h3=3500), set())
    # b (3 GiB) -> h2 (4096); c (2 GiB) -> h3 (3500 > 1024 left on h2); a -> h3 (1452).
    assert plan.moves == (("b", "h2"), ("c", "h3"), ("a", "h3"))
    assert plan.unplaceable == () and plan.shutdowns == ()


def test_pinned_vms_are_shut_down_and_stopped_ones_stay():
    vms = [VmOnHost("cvm", "running", 4096, True), VmOnHost("off", "shutoff", 512, False),
           VmOnHost("web", "paused", 256, False)]
    plan = plan_evacuation("h1", vms, caps(h1=100, h2=8000), set())
    assert plan.shutdowns == ("cvm",)
    assert plan.left == ("off",)
    assert plan.moves == (("web", "h2"),)


def test_hosts_in_maintenance_and_unreachable_ones_get_nothing():
    vms = [VmOnHost("a", "running", 512, False)]
    hosts = [*caps(h1=0, h2=9000, h3=1000), HostCapacity("h4", 8192, 8000, reachable=False)]
    assert plan_evacuation("h1", vms, hosts, {"h1", "h2"}).moves == (("a", "h3"),)


def test_a_vm_that_fits_nowhere_is_reported_with_the_numbers():
    vms = [VmOnHost("big", "running", 6000, False), VmOnHost("small", "running", 100, False)]
    plan = plan_evacuation("h1", vms, caps(h1=0, h2=5000, h3=4000), set())
    assert plan.moves == (("small", "h2"),)
    (vm, why), = plan.unplaceable
    assert vm == "big" and "6000 MiB" in why and "5000 MiB" in why


def _cluster(tmp_path):
    return in_store(ClusterSpec(name="c", hosts=[HostSpec(name=n, uri="test:///default")
                                                 for n in ("h1", "h2")]), tmp_path)


def test_state_marks_the_host_unschedulable_and_survives_a_new_reader(tmp_path):
    cluster = _cluster(tmp_path)
    assert unschedulable_hosts(cluster.state) == set()
    entry = maintenance.mark_unschedulable(cluster, "h1")
    assert entry["state"] == "entering"
    fresh = sqlite_state(tmp_path)  # another reader of the same store
    assert unschedulable_hosts(fresh) == {"h1"}
    shown = maintenance.status(cluster)["hosts"]
    assert shown["h1"]["state"] == "entering" and shown["h2"] == {"state": "schedulable"}
    with pytest.raises(NotFound):
        maintenance.mark_unschedulable(cluster, "h9")


def test_exit_of_a_host_not_in_maintenance_is_not_found(tmp_path):
    cluster = _cluster(tmp_path)
    with pytest.raises(NotFound, match="not in maintenance"):
        maintenance.exit_(cluster, "h2")


def test_exit_makes_the_host_schedulable_again(tmp_path):
    cluster = _cluster(tmp_path)
    maintenance.mark_unschedulable(cluster, "h1")
    maintenance.mark_unschedulable(cluster, "h2")
    out = maintenance.exit_(cluster, "h1")
    assert out == {"host": "h1", "state": "schedulable", "started": [], "restored": [],
                   "not_restored": []}
    assert unschedulable_hosts(cluster.state) == {"h2"}
    with pytest.raises(NotFound):
        maintenance.exit_(cluster, "h1")


def other_holder(tmp_path, cluster):
    """The same cluster seen by another process (its own store session)."""
    other = sqlite_state(tmp_path)
    return other.spec()


def test_a_second_enter_while_one_runs_is_a_conflict_and_changes_nothing(tmp_path):
    cluster = _cluster(tmp_path)
    with maintenance.host_lock(other_holder(tmp_path, cluster), "h1", doing="enter"), \
            pytest.raises(Conflict, match="maintenance run of h1 is still running"):
        maintenance.enter(cluster, "h1")
    assert unschedulable_hosts(cluster.state) == set()


def test_exit_during_enter_is_refused(tmp_path):
    cluster = _cluster(tmp_path)
    maintenance.mark_unschedulable(cluster, "h1")
    with maintenance.host_lock(other_holder(tmp_path, cluster), "h1", doing="enter"), \
            pytest.raises(Conflict, match="cannot exit maintenance of h1"):
        maintenance.exit_(cluster, "h1")
    assert unschedulable_hosts(cluster.state) == {"h1"}
    maintenance.exit_(cluster, "h1")  # once enter is over
    assert unschedulable_hosts(cluster.state) == set()


def test_a_late_update_does_not_bring_back_an_entry_exit_removed(tmp_path):
    cluster = _cluster(tmp_path)
    maintenance.mark_unschedulable(cluster, "h1")
    maintenance.exit_(cluster, "h1")
    with pytest.raises(Conflict, match="left maintenance"):
        maintenance._update_host(cluster.state, "h1", lambda e: e.setdefault(
            "moved", []).append({"vm": "v", "to": "h2"}))
    assert unschedulable_hosts(cluster.state) == set()


# -- the run, on a simulated cluster (tests/simhosts.py) -------------------------------

def _three(tmp_path):
    return in_store(ClusterSpec(name="c", hosts=[HostSpec(name=n, uri="test:///default")
                                                 for n in ("h1", "h2", "h3")]), tmp_path)


def test_a_refused_admission_moves_nothing_and_leaves_the_host_schedulable(tmp_path):
    from ahvlite.cluster.maintenance import Hooks
    from tests.simhosts import SimHosts

    cluster, sim, asked = _three(tmp_path), SimHosts(), []

    def admit(moves):
        asked.append(moves)
        raise Conflict("moving v1 to h2 would break the HA guarantee: 512 MiB missing")

    with pytest.raises(Conflict, match="512 MiB missing"):
        maintenance.enter(cluster, "h1", ops=sim, hooks=Hooks(admit=admit))
    assert sorted(vm for vm, _ in asked[0]) == ["v1", "v2", "v3"]  # the plan as a whole
    assert sim.migrations == {} and sim.shutdowns == {}
    assert unschedulable_hosts(cluster.state) == set()
    # A host an earlier run left in maintenance stays there.
    maintenance.mark_unschedulable(cluster, "h1")
    with pytest.raises(Conflict):
        maintenance.enter(cluster, "h1", ops=sim, hooks=Hooks(admit=admit))
    assert unschedulable_hosts(cluster.state) == {"h1"}


def test_a_host_the_plan_cannot_judge_is_replaced_by_an_admitted_one(tmp_path):
    from ahvlite.cluster.maintenance import Hooks
    from tests.simhosts import SimHosts

    cluster, sim, asked = _three(tmp_path), SimHosts(), []
    sim.vms = {"v1": {"host": "h1", "state": "running", "mib": 512, "pinned": False}}
    sim.refuse["h2"] = Conflict("v1's CPU cannot run on h2")
    progress: list[tuple[int, str]] = []
    out = maintenance.enter(cluster, "h1", ops=sim, hooks=Hooks(
        admit=asked.append, progress=lambda pct, msg: progress.append((pct, msg))))
    assert asked == [[("v1", "h2")], [("v1", "h3")]]  # the plan, then the replacement
    assert [(m["vm"], m["to"]) for m in out.moved] == [("v1", "h3")]
    assert out.state == "in_maintenance" and sim.vms["v1"]["host"] == "h3"
    assert any("h2 refused" in msg for _, msg in progress)
    assert progress[-1][0] == 100 and [p for p, _ in progress] == sorted(
        p for p, _ in progress)


def test_exit_restores_what_admission_allows_and_says_why_not_the_rest(tmp_path):
    from ahvlite.cluster.maintenance import Hooks
    from tests.simhosts import SimHosts

    cluster, sim = _three(tmp_path), SimHosts()
    maintenance.enter(cluster, "h1", ops=sim)
    assert sim.shutdowns == {"p1": 1} and all(
        sim.vms[v]["host"] != "h1" for v in ("v1", "v2", "v3"))

    def admit(moves):
        if len(moves) > 1 or moves == [("v2", "h1")]:
            raise Conflict(f"moving {moves[0][0]} would break the HA guarantee: 512 MiB "
                           "missing")

    out = maintenance.exit_(cluster, "h1", restore=True, ops=sim, hooks=Hooks(admit=admit))
    assert sorted(r["vm"] for r in out["restored"]) == ["v1", "v3"]
    assert out["not_restored"] == [{"vm": "v2", "reason": "moving v2 would break the HA "
                                                          "guarantee: 512 MiB missing"}]
    assert out["started"] == ["p1"] and sim.vms["v2"]["host"] != "h1"
    assert unschedulable_hosts(cluster.state) == set()
