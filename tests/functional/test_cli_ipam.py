"""Managed networks through a real controller's API (tests/apicluster.py): ``net
create/update/show/delete`` with IPAM, addresses allocated by ``vm create`` and
``template deploy`` and freed by ``vm delete``, every mistake one clear line with
nothing made, and what resumed attempts of a dead leader's task do.

The cluster is libvirt's test driver (one host, h1): it cannot hot-plug, so ``vm nic
add`` fails there, which shows its address going again."""

from __future__ import annotations

import json
import uuid

import pytest

from ahvlite.cluster import ipam, vms
from ahvlite.controller.kinds import VM_UUID_NAMESPACE
from ahvlite.controller.tasks import TaskState, TaskStore
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.spec.vm import DiskSpec, NicSpec, VmSpec
from ahvlite.virt.conn import connection
from tests.apicluster import api_cluster
from tests.clirun import succeeded as ok
from tests.taskrecords import ended, put_resumed, resumed_id
from tests.testdriver import POOL, domain_names, volumes

pytestmark = pytest.mark.functional

SPEC = ClusterSpec(name="cip", shared_pool=POOL,
                   hosts=[HostSpec(name="h1", uri="test:///default")])
BLUE = ["--vlan", "10", "--subnet", "10.10.0.0/24", "--gateway", "10.10.0.1",
        "--pool", "10.10.0.100-10.10.0.104", "--dns", "10.10.0.2", "--domain", "lab.example",
        "--mtu", "1400", "--lease-s", "600"]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with connection("test:///default"), \
            api_cluster(tmp_path_factory.mktemp("cip"), SPEC) as c:
        ok(c.cli("net", "create", "blue", *BLUE, "--json"))
        ok(c.cli("net", "create", "red", "--vlan", "20"), as_json=False)
        yield c


@pytest.fixture(scope="module")
def cluster(api):
    return api.state.spec()


def refused(r, code: int, *needles: str) -> None:
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def held(api) -> list[tuple[str, str]]:
    return [(a.ip, a.vm) for a in ipam.allocations(api.coord, "blue")]


def addresses_of(api, name: str) -> list[str]:
    listed = ok(api.cli("vm", "list", "--json"))
    return next(v["ips"] for v in listed if v["name"] == name)


def drop(cluster, *names: str) -> None:
    for name in names:
        if name in domain_names():
            vms.delete_vm(cluster, name, force=True)


def test_a_managed_network_is_created_shown_and_guarded(api):
    shown = ok(api.cli("net", "show", "blue", "--json"))
    assert shown["managed"] and shown["vlan"] == 10 and shown["dhcp_server"] == "10.10.0.254"
    assert shown["ipam"]["dns"] == ["10.10.0.2"] and shown["ipam"]["mtu"] == 1400
    assert shown["ipam"]["lease_s"] == 600 and shown["ipam"]["domain"] == "lab.example"
    assert shown["pools"] == [{"range": "10.10.0.100-10.10.0.104", "size": 5, "used": 0}]
    assert shown["allocations"] == []
    assert ok(api.cli("net", "show", "red", "--json"))["managed"] is False
    human = ok(api.cli("net", "show", "blue"), as_json=False).stdout
    assert "subnet 10.10.0.0/24" in human and "0 of 5 in use" in human


@pytest.mark.parametrize(("args", "code", "needles"), [
    (["--vlan", "11", "--subnet", "10.11.0.0/24", "--pool", "10.11.0.100-10.11.0.50"], 2,
     ["pools[0]", "10.11.0.100-10.11.0.50", "start is not after its end"]),
    (["--vlan", "11", "--subnet", "10.11.0.0/24", "--pool", "10.12.0.1-10.12.0.9"], 2,
     ["pools[0]", "inside 10.11.0.0/24"]),
    (["--vlan", "11", "--subnet", "10.11.0.0/24", "--pool", "10.11.0.10-10.11.0.20",
      "--pool", "10.11.0.15-10.11.0.30"], 2, ["pools[1]", "not overlapping pools[0]"]),
    (["--vlan", "11", "--subnet", "10.11.0.0/24", "--gateway", "10.11.0.12",
      "--pool", "10.11.0.10-10.11.0.20"], 2, ["gateway", "10.11.0.12", "in no pool"]),
    (["--vlan", "11", "--pool", "10.11.0.10-10.11.0.20"], 2, ["--subnet", "--pool"]),
    (["--vlan", "11", "--subnet", "10.11.0.0/24", "--pool", "x"], 2, ["pool='x'"]),
    (["--vlan", "11", "--subnet", "10.11.0.0/24", "--pool", "10.11.0.10-10.11.0.20",
      "--mtu", "50"], 2, ["mtu"]),
    (["--vlan", "10", "--subnet", "10.11.0.0/24", "--pool", "10.11.0.10-10.11.0.20"], 2,
     ["vlan", "'blue' has VLAN 10"]),
])
def test_bad_networks_are_one_line_and_change_nothing(api, args, code, needles):
    before = api.state.spec().network
    refused(api.cli("net", "create", "bad", *args), code, *needles)
    assert api.state.spec().network == before


def test_vm_create_allocates_reserves_and_refuses_clearly(api, cluster):
    before_names, before_vols = domain_names(), volumes()
    try:
        made = ok(api.cli("vm", "create", "a1", "--memory-mib", "128", "--nic", "blue",
                          "--nic", "red", "--json"))
        assert made["ips"] == ["10.10.0.100"]
        assert [n.get("ip") for n in made["nics"]] == ["10.10.0.100", None]
        ok(api.cli("vm", "create", "a2", "--memory-mib", "128", "--nic", "blue:ip=10.10.0.50",
                   "--json"))
        assert addresses_of(api, "a1") == ["10.10.0.100"]
        assert addresses_of(api, "a2") == ["10.10.0.50"]
        shown = ok(api.cli("vm", "show", "a2", "--json"))
        assert shown["ips"] == ["10.10.0.50"] and shown["nics"][0]["ip"] == "10.10.0.50"
        # Each mistake: one line naming the network and the address, nothing made.
        now = domain_names()
        for nic, code, needles in (
                ("blue:ip=10.10.0.50", 4, ["address 10.10.0.50 on network blue is taken "
                                           "by a2"]),
                ("blue:ip=10.11.0.5", 2, ["10.11.0.5", "inside 10.10.0.0/24",
                                          "network blue"]),
                ("blue:ip=10.10.0.1", 2, ["10.10.0.1", "gateway of network blue"]),
                ("blue:ip=10.10.0.254", 2, ["DHCP server of network blue"]),
                ("red:ip=10.20.0.5", 2, ["nic.ip", "network red is not managed"]),
                ("red:trunk=10,30", 2, ["nic.trunk_vlans", "managed network blue"])):
            refused(api.cli("vm", "create", "a3", "--memory-mib", "128", "--nic", nic),
                    code, *needles)
        assert domain_names() == now
        assert held(api) == [("10.10.0.50", "a2"), ("10.10.0.100", "a1")]
        listed = ok(api.cli("net", "show", "blue", "--json"))["allocations"]
        assert [(a["ip"], a["vm"], a["host"], a["orphan"]) for a in listed] == [
            ("10.10.0.50", "a2", "h1", False), ("10.10.0.100", "a1", "h1", False)]
        # A network with allocations is not deleted, nor re-addressed.
        refused(api.cli("net", "delete", "blue"), 4, "network blue has 2 allocated",
                "a1, a2")
        refused(api.cli("net", "update", "blue", "--subnet", "10.30.0.0/24", "--gateway",
                        "10.30.0.1", "--pool", "10.30.0.10-10.30.0.20"), 4,
                "subnet cannot change", "a1, a2")
        refused(api.cli("net", "update", "blue", "--gateway", "10.10.0.50"), 4,
                "gateway 10.10.0.50 is the address of a2")
        # The same through a whole cluster file.
        doc = ok(api.cli("cluster", "export", "--json"))
        doc["network"]["networks"][0]["ipam"].update(
            subnet="10.30.0.0/24", gateway="10.30.0.1",
            pools=[{"start": "10.30.0.10", "end": "10.30.0.20"}])
        path = api.dir / "moved.json"
        path.write_text(json.dumps(doc))
        before = api.state.spec()
        refused(api.cli("cluster", "apply", "-f", str(path)), 4, "subnet cannot change")
        assert api.state.spec() == before
        # Deleting a VM frees its addresses.
        ok(api.cli("vm", "delete", "a1", "--json"))
        assert held(api) == [("10.10.0.50", "a2")]
        # One deleted behind the cluster's back: an orphan, freed by hand.
        refused(api.cli("net", "release", "blue", "10.10.0.50"), 4,
                "address 10.10.0.50 on network blue belongs to a2 on h1")
        vms.delete_vm(cluster, "a2", force=True)
        orphan = ok(api.cli("net", "show", "blue", "--json"))["allocations"]
        assert [(a["ip"], a["host"], a["orphan"]) for a in orphan] == [
            ("10.10.0.50", None, True)]
        assert "(none: orphan)" in ok(api.cli("net", "show", "blue"), as_json=False).stdout
        freed = ok(api.cli("net", "release", "blue", "10.10.0.50", "--json"))
        assert freed["released"]["vm"] == "a2" and held(api) == []
        refused(api.cli("net", "release", "blue", "10.10.0.50"), 3, "no allocation of")
        refused(api.cli("net", "release", "blue", "10.10.0.500"), 2, "ip='10.10.0.500'")
    finally:
        drop(cluster, "a1", "a2")
        forget(api, "a1", "a2")
    assert volumes() == before_vols and domain_names() == before_names


def test_a_failed_nic_add_leaves_no_address(api, cluster):
    vms.create_vm(cluster, VmSpec(name="n1", memory_mib=128))
    try:
        before = held(api)
        r = api.cli("vm", "nic", "add", "n1", "blue:ip=10.10.0.60")
        # No hot-plug on this driver: the NIC is refused after its address was taken.
        assert r.returncode != 0 and "not supported" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        task = max((t for t, _ in TaskStore(api.coord).all() if t.kind == "vm.nic.add"),
                   key=lambda t: t.created_at)
        assert list(task.steps_done["address"].values()) == ["10.10.0.60"]  # it was held
        assert held(api) == before  # and is free again
        refused(api.cli("vm", "nic", "add", "n1", "red:ip=10.20.0.6"), 2, "not managed")
    finally:
        drop(cluster, "n1")


def test_update_pools_and_options(api):
    done = ok(api.cli("net", "update", "blue", "--pool", "10.10.0.100-10.10.0.103",
                      "--pool", "10.10.0.150-10.10.0.151", "--dns", "10.10.0.3",
                      "--clear", "domain", "--json"))
    assert [p["end"] for p in done["ipam"]["pools"]] == ["10.10.0.103", "10.10.0.151"]
    assert done["ipam"]["dns"] == ["10.10.0.3"] and "domain" not in done["ipam"]
    refused(api.cli("net", "update", "blue", "--clear", "subnet"), 2, "clear")
    refused(api.cli("net", "update", "red", "--gateway", "10.20.0.1"), 2, "subnet")
    refused(api.cli("net", "update", "blue", "--pool", "10.10.0.1-10.10.0.9"), 2,
            "gateway", "in no pool")
    ok(api.cli("net", "update", "blue", "--pool", "10.10.0.100-10.10.0.104", "--json"))


def test_template_deploy_allocates_all_or_nothing(api, cluster):
    vms.create_vm(cluster, VmSpec(name="tsrc", memory_mib=64,
                                  nics=[NicSpec(network="blue")]))
    # The source VM itself got no address (made outside a task): 5 free.
    ok(api.cli("template", "create", "tb", "--from-vm", "tsrc", "--json"))
    before_names, before_held = domain_names(), held(api)
    try:
        refused(api.cli("template", "deploy", "tb", "--count", "6", "--prefix", "f"), 4,
                "network blue has no free address for 6 NIC(s)",
                "10.10.0.100-10.10.0.104")
        assert domain_names() == before_names and held(api) == before_held
        out = ok(api.cli("template", "deploy", "tb", "--count", "3", "--prefix", "t",
                         "--json"))
        assert out["failed"] == {}
        got = {v["name"]: v["ips"] for v in out["vms"]}
        assert got == {"t1": ["10.10.0.100"], "t2": ["10.10.0.101"], "t3": ["10.10.0.102"]}
        assert addresses_of(api, "t2") == ["10.10.0.101"]
    finally:
        drop(cluster, "t1", "t2", "t3", "tsrc")
        forget(api, "t1", "t2", "t3")


def forget(api, *names: str) -> None:
    """Free what VMs deleted behind IPAM's back (by the test) held."""
    ipam.release(api.coord, [(a.mac, "blue") for a in ipam.allocations(api.coord, "blue")
                             if a.vm in names], None, now=0.0)


def test_a_resumed_create_keeps_its_macs_and_addresses(api, cluster):
    # The dead attempt recorded its spec (MACs) and allocated; the create never ran.
    task_id = resumed_id()
    vm_uuid = str(uuid.uuid5(VM_UUID_NAMESPACE, task_id))
    spec = VmSpec(name="rc", uuid=vm_uuid, memory_mib=128,
                  nics=[NicSpec(network="blue", mac="52:54:00:00:cc:01")])
    got = ipam.allocate_vms(cluster, [spec], by=task_id, now=lambda: 0.0)
    assert got == {"52:54:00:00:cc:01": "10.10.0.100"}
    doc = spec.model_dump(mode="json")
    del doc["uuid"]
    try:
        end = ended(api.coord, put_resumed(
            api.coord, "vm.spec.create", {"spec": {**doc, "nics": [{"network": "blue"}]},
                                          "host": None, "start": False},
            task_id=task_id, steps_done={"spec": spec.model_dump(mode="json"),
                                         "addresses": got}))
        assert end.state == TaskState.SUCCEEDED, end.error
        assert [n["mac"] for n in end.result["nics"]] == ["52:54:00:00:cc:01"]
        assert end.result["ips"] == ["10.10.0.100"]
        assert held(api) == [("10.10.0.100", "rc")]  # one address, none leaked
        # A resumed delete that finds the VM gone still frees what it recorded.
        vms.delete_vm(cluster, "rc", force=True)
        end = ended(api.coord, put_resumed(
            api.coord, "vm.lifecycle", {"action": "delete", "name": "rc", "force": False,
                                        "timeout_s": 60},
            steps_done={"ipam-nics": {"uuid": vm_uuid,
                                      "nics": [["52:54:00:00:cc:01", "blue"]]}}))
        assert end.state == TaskState.SUCCEEDED, end.error
        assert end.result["released"] == {"52:54:00:00:cc:01": "10.10.0.100"}
        assert held(api) == []
    finally:
        drop(cluster, "rc")


def test_a_create_that_fails_frees_its_addresses(api, cluster):
    vms.create_vm(cluster, VmSpec(name="dup", memory_mib=64))
    try:
        # The name is taken: found when the leader creates, after the addresses were
        # allocated; they go again.
        end = ended(api.coord, put_resumed(
            api.coord, "vm.spec.create", {"spec": {"name": "dup", "memory_mib": 64,
                                                   "nics": [{"network": "blue"}]},
                                          "host": None, "start": False}, attempts=0))
        assert end.state == TaskState.FAILED and "already exists" in end.error
        assert held(api) == []
    finally:
        drop(cluster, "dup")


def test_deployed_vms_that_fail_free_their_addresses(api, cluster):
    # A template with a disk gets a seed ISO, which this driver cannot upload: every VM
    # fails and is undone, and so is its address.
    vms.create_vm(cluster, VmSpec(name="dsrc", memory_mib=64, disks=[DiskSpec(size_mib=16)],
                                  nics=[NicSpec(network="blue")]))
    ok(api.cli("template", "create", "td", "--from-vm", "dsrc", "--json"))
    before_names = domain_names()
    try:
        r = api.cli("template", "deploy", "td", "--count", "2", "--prefix", "x")
        assert r.returncode != 0 and "no VM of td was deployed" in r.stderr, r.stderr
        task = max((t for t, _ in TaskStore(api.coord).all()
                    if t.kind == "template.deploy"), key=lambda t: t.created_at)
        assert sorted(task.steps_done["addresses"].values()) == ["10.10.0.100",
                                                                 "10.10.0.101"]
        assert held(api) == [] and domain_names() == before_names
    finally:
        drop(cluster, "x1", "x2", "dsrc")
