"""Maintenance mode: the pure move plan and the state that survives CLI restarts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ahvlite.cluster import maintenance
from ahvlite.cluster.legacy import open_cluster_file
from ahvlite.cluster.maintenance import VmOnHost, plan_evacuation
from ahvlite.cluster.placement import HostCapacity
from ahvlite.cluster.schedulable import unschedulable_hosts
from ahvlite.errors import Conflict, NotFound
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


@pytest.mark.parametrize(("args", "needle"), [
    (["--parallel", "0"], "--parallel=0"),
    (["--max-downtime-ms", "-5"], "--max-downtime-ms=-5"),
])
def test_background_enter_checks_options_before_marking_the_host(tmp_path, args, needle):
    cluster = ClusterSpec(name="c", hosts=[HostSpec(name=n, uri="test:///default")
                                           for n in ("h1", "h2")])
    cf = tmp_path / "cluster.yaml"
    cf.write_text(cluster.dump_yaml())
    env = {**os.environ, "AHVLITE_CLUSTER": str(cf), "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-m", "ahvlite.cli.main", "host", "maintenance",
                        "enter", "h1", *args], capture_output=True, text=True, env=env,
                       timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and needle in out and "Traceback" not in out, out
    assert unschedulable_hosts(open_cluster_file(cf).state) == set()
