"""Live-cluster input for ADS: stats records -> Problem, rules in cluster state (the CLI
through the API: tests/functional/test_ops_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ahvlite.cluster.adsrules import add_rule, load_rules, remove_rule
from ahvlite.cluster.legacy import open_cluster_file as load_cluster
from ahvlite.cluster.vms import VmInfo
from ahvlite.errors import Conflict, InvalidSpec, NotFound
from ahvlite.sched.model import AntiAffinityGroup, Rules, VmHostAffinity
from ahvlite.sched.snapshot import problem_from


def info(name: str, host: str, *, vcpus: int = 2, mem: int = 2048, state: str = "running",
         labels: dict[str, str] | None = None, pinned: bool = False) -> VmInfo:
    return VmInfo(name=name, uuid=name, host=host, state=state, vcpus=vcpus, memory_mib=mem,
                  current_memory_mib=mem, overcommit=False, genid=None, firmware="bios",
                  vtpm=False, labels=labels or {}, pinned=pinned)


def record(host: str, vms: list[tuple[str, float, int, float]]) -> dict:
    """A stats record: (name, cpu % of its vCPUs, vcpus, disk bytes/s)."""
    return {"host": host, "cpus": 4, "vms": [
        {"name": n, "cpu_pct": c, "vcpus": k, "disk_read_bytes_per_s": io,
         "disk_write_bytes_per_s": 0.0} for n, c, k, io in vms]}


@pytest.fixture
def cluster(tmp_path: Path):
    path = tmp_path / "cluster.yaml"
    path.write_text("name: c1\nhosts:\n  - name: h1\n    uri: test:///default\n"
                    "  - name: h2\n    uri: test:///default\n")
    return path, load_cluster(path)


def test_records_become_demand_history_and_storage_load(cluster):
    _, spec = cluster
    infos = [info("cvm1", "h1", vcpus=2, labels={"ahvlite.io/role": "cvm"}),
             info("db", "h1", vcpus=2), info("web", "h1", vcpus=1),
             info("off", "h2", state="shutoff"), info("gpu", "h2", pinned=True)]
    records = {"h1": [record("h1", [("cvm1", 50, 2, 0), ("db", 80, 2, 300), ("web", 40, 1, 100)]),
                      record("h1", [("cvm1", 25, 2, 0), ("db", 90, 2, 100), ("web", 20, 1, 100)])],
               "h2": [record("h2", [("gpu", 10, 2, 0)])]}
    p = problem_from(spec, infos, records, memory_mib={"h1": 8192, "h2": 8192},
                     closed={"h2"}, rules=Rules())
    h1, h2 = p.hosts
    assert (h1.cpu_capacity_pct, h1.memory_mib, h1.schedulable) == (400.0, 8192, True)
    assert h1.storage_cpu_alloc_pct == 200.0 and h1.storage_cpu_history_pct == (100.0, 50.0)
    assert not h2.schedulable  # in maintenance
    vms = {v.name: v for v in p.vms}
    assert "off" not in vms  # a stopped VM holds nothing on a host
    assert vms["db"].cpu_history_pct == (160.0, 180.0)  # % of its vCPUs x vCPUs
    # The CVM's load split by disk bytes: db 300 of 400, then 100 of 200.
    assert vms["db"].storage_history_pct == (75.0, 25.0)
    assert vms["cvm1"].pinned and vms["gpu"].pinned and not vms["db"].pinned


def test_rules_are_stored_validated_and_removed(cluster):
    _path, spec = cluster
    add_rule(spec, VmHostAffinity("db-on-h1", ("db",), ("h1",)))
    add_rule(spec, AntiAffinityGroup("spread", ("a", "b")))
    rules = load_rules(spec.state)
    assert rules.names() == ["db-on-h1", "spread"]
    with pytest.raises(Conflict):
        add_rule(spec, AntiAffinityGroup("spread", ("c", "d")))
    with pytest.raises(InvalidSpec) as e:
        add_rule(spec, VmHostAffinity("bad", ("db",), ("h7",)))
    assert e.value.field == "hosts" and e.value.value == "h7"
    assert load_rules(spec.state).names() == ["db-on-h1", "spread"]  # nothing half-made
    assert remove_rule(spec.state, "spread").names() == ["db-on-h1"]
    with pytest.raises(NotFound):
        remove_rule(spec.state, "spread")


def test_rule_on_an_empty_cluster_says_it_has_no_hosts(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("name: empty\nhosts: []\n")
    with pytest.raises(InvalidSpec) as e:
        add_rule(load_cluster(path), VmHostAffinity("r", ("db",), ("h9",)))
    assert e.value.allowed == "the cluster empty has no hosts"


def test_vm_migrate_task_kind_checks_its_params():
    from ahvlite.controller.kinds import registry

    kind = registry()["vm.migrate"]
    assert kind.validate({"name": "web1", "to": "h2"}) == {"name": "web1", "to": "h2"}
    with pytest.raises(InvalidSpec) as e:
        kind.validate({"name": "web1"})
    assert e.value.field == "to"
    with pytest.raises(InvalidSpec) as e:
        kind.validate({"name": "bad name!", "to": "h2"})
    assert e.value.field == "name"
