"""``ahvlite vm ...`` as a client of a real controller's API (tests/apicluster.py): the
checks made before submitting, the kinds the leader runs, what a resumed attempt does.

The cluster is libvirt's test driver (one host): it has no hot-plug and no console
stream, so those commands are shown failing cleanly (nothing half-made) here, and
working in tests/lab/test_vms.py.
"""

from __future__ import annotations

import uuid

import pytest

from ahvlite.cluster import vms
from ahvlite.controller.kinds import VM_UUID_NAMESPACE, attempt_tag
from ahvlite.controller.tasks import TaskState, TaskStore
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.spec.network import NetworkSpec, VlanNetworkSpec
from ahvlite.spec.vm import DiskSpec, NicSpec, VmSpec
from ahvlite.virt import storage
from ahvlite.virt.conn import connection
from tests.apicluster import api_cluster
from tests.clirun import succeeded as ok
from tests.taskrecords import ended, put_resumed, resumed_id
from tests.testdriver import POOL, volumes

pytestmark = pytest.mark.functional

SPEC = ClusterSpec(name="cvm", shared_pool=POOL,
                   hosts=[HostSpec(name="h1", uri="test:///default")],
                   network=NetworkSpec(networks=[VlanNetworkSpec(name="vlan10", vlan=10)]))


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    # test:///default keeps its state only while a connection to it is open.
    with connection("test:///default"), \
            api_cluster(tmp_path_factory.mktemp("cvm"), SPEC) as c:
        yield c


@pytest.fixture(scope="module")
def cluster(api):
    """The controller's cluster, for looking at libvirt from the test."""
    return api.state.spec()


def tasks(api) -> dict:
    return {t.id: t for t, _ in TaskStore(api.coord).all()}


def test_create_is_checked_here_first_then_submitted(api, cluster):
    before = set(tasks(api))
    bad = api.cli("vm", "create", "web1", "--memory-mib", "1", "--json")
    assert bad.returncode == 2 and "memory_mib" in bad.stdout
    assert api.cli("vm", "stop", "web1", "--json").returncode == 2
    assert set(tasks(api)) == before  # refused before anything was submitted
    made = ok(api.cli("vm", "create", "web1", "--memory-mib", "128", "--disk", "16M",
                      "--host", "h1", "--json"))
    try:
        assert made["host"] == "h1" and made["state"] == "shutoff"
        stopped = api.cli("vm", "stop", "web1", "--force", "--no-wait")
        assert stopped.returncode == 0, stopped.stderr
        new = {i: t for i, t in tasks(api).items() if i not in before}
        assert len(new) == 2
        created = next(t for t in new.values() if t.kind == "vm.spec.create")
        assert created.params["host"] == "h1" and "uuid" not in created.params["spec"]
        assert created.params["spec"]["disks"][0]["size_mib"] == 16
        assert created.submitted_by == "cert:admin"
        # The VM's UUID derives from the task id: a re-run finds it, never a twin.
        assert made["uuid"] == str(uuid.uuid5(VM_UUID_NAMESPACE, created.id))
        assert new[stopped.stdout.strip()].params == {
            "action": "stop", "name": "web1", "force": True, "timeout_s": 60.0}
    finally:
        ended(api.coord, stopped.stdout.strip())
        vms.delete_vm(cluster, "web1", force=True)


def test_create_and_start_takes_each_hosts_connection_once(api, cluster):
    """`vm create --start` goes to the host once for the whole task (the look for an
    earlier attempt's VM, the checks, placement, design, define, start); the count is
    the controller's own (/v1/controller/connections)."""
    from ahvlite.controller.api.client import ApiClient
    from ahvlite.virt.pool import ConnectionPool

    before_pool = vms._pool
    vms.use_pool(ConnectionPool())  # what `controller run` does

    def counts() -> dict:
        with ApiClient.from_env(api.env) as c:
            return c.get("/v1/controller/connections")["hosts"]["h1"]

    try:
        first = counts()
        made = ok(api.cli("vm", "create", "once", "--memory-mib", "128", "--disk", "16M",
                          "--start", "--json"))
        assert made["state"] == "running"
        took = {k: v - first[k] for k, v in counts().items()}
        assert took == {"opened": 1, "leased": 1}, took
    finally:
        vms.use_pool(before_pool)
        vms.delete_vm(cluster, "once", force=True)


def test_update_sets_and_removes_labels_and_ha_priority(api, cluster):
    vms.create_vm(cluster, VmSpec(name="upd", memory_mib=128))
    try:
        shown = ok(api.cli("vm", "update", "upd", "--ha-priority", "7", "--label", "team=a",
                           "--json"))
        assert shown["labels"] == {"ahvlite.io/ha-priority": "7", "team": "a"}
        shown = ok(api.cli("vm", "update", "upd", "--remove-label", "team", "--json"))
        assert shown["labels"] == {"ahvlite.io/ha-priority": "7"}
        assert vms.show_vm(cluster, "upd").labels == {"ahvlite.io/ha-priority": "7"}
        none = api.cli("vm", "update", "upd")
        assert none.returncode == 2 and "--ha-priority" in none.stderr
        high = api.cli("vm", "update", "upd", "--ha-priority", "5000")
        assert high.returncode == 2
        # Whatever the submitter, the kind names a bad label (control characters).
        bad = api.cli("task", "submit", "vm.update", "-p", "name=upd", "-p",
                      'labels={"k": "a\\u0001b"}')
        assert bad.returncode == 2 and "labels.k" in bad.stderr, bad.stderr
        missing = api.cli("vm", "update", "nosuch", "--label", "a=b")
        assert missing.returncode == 3 and "no VM named 'nosuch'" in missing.stderr
    finally:
        vms.delete_vm(cluster, "upd", force=True)


def test_show_cpu_check_and_list_are_reads(api):
    shown = ok(api.cli("vm", "show", "test", "--json"))
    assert shown["name"] == "test" and shown["host"] == "h1"
    human = ok(api.cli("vm", "show", "test"), as_json=False)
    assert "uuid" in human.stdout and "running" in human.stdout
    listed = ok(api.cli("vm", "list", "--json"))
    assert "test" in [v["name"] for v in listed]
    odd = api.cli("vm", "show", "../x")
    assert odd.returncode == 2 and "name='../x'" in odd.stderr


def test_hot_plug_the_driver_cannot_do_leaves_nothing_behind(api, cluster):
    # The test driver has no attachDevice: the disk's volume must go again, and the
    # error is the task's, with its exit code, no traceback.
    vms.create_vm(cluster, VmSpec(name="hp", memory_mib=128))
    try:
        before = volumes()
        r = api.cli("vm", "disk", "add", "hp", "16M")
        assert r.returncode != 0 and "not supported" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and volumes() == before
        r = api.cli("vm", "nic", "remove", "hp", "52:54:00:00:00:01")
        assert r.returncode == 3 and "has no NIC with MAC" in r.stderr
        r = api.cli("vm", "nic", "add", "hp", "vlan99")
        assert r.returncode == 2 and "nic.network" in r.stderr
        r = api.cli("vm", "disk", "add", "hp", "nosuch")
        assert r.returncode == 2 and "disk.image='nosuch'" in r.stderr
    finally:
        vms.delete_vm(cluster, "hp", force=True)


def test_console(api):
    r = api.cli("vm", "console", "test")
    assert r.returncode == 7 and "--command" in r.stderr  # the hint says what works
    r = api.cli("vm", "console", "test", "--command", "uname\nreboot")
    assert r.returncode == 2 and "command=" in r.stderr
    r = api.cli("vm", "console", "test", "--command", "uname", "--json")
    assert r.returncode != 0 and "Traceback" not in r.stderr  # no console stream here


def test_migrate(api):
    r = api.cli("vm", "migrate", "test", "--json")
    assert r.returncode == 4 and "no host can take test" in r.stdout, r.stdout
    r = api.cli("vm", "migrate", "test", "--to", "h9")
    assert r.returncode == 2 and "to='h9'" in r.stderr
    r = api.cli("vm", "migrate", "test", "--max-iterations", "0")
    assert r.returncode == 2 and "--max-iterations=0" in r.stderr
    r = api.cli("vm", "migrate", "nosuch")
    assert r.returncode == 3


# -- resumed attempts: what a dead leader's attempt left is finished, never doubled -----

def test_resumed_disk_add_finds_its_disk_or_clears_its_leftover(api, cluster):
    vms.create_vm(cluster, VmSpec(name="rd", memory_mib=128,
                                  disks=[DiskSpec(name="data", size_mib=16)]))
    try:
        # The dead attempt attached "data": done, nothing made twice.
        before = volumes()
        done = ended(api.coord, put_resumed(
            api.coord, "vm.disk.add", {"name": "rd", "disk": {"size_mib": 16, "name": "data"}},
            steps_done={"name": "data"}))
        assert done.state == TaskState.SUCCEEDED, done.error
        assert [d["name"] for d in done.result["disks"]] == ["data"]
        assert volumes() == before
        # The dead attempt made the volume of "extra" but did not attach it: that volume
        # goes before the disk is added again (which the test driver then refuses, and
        # that attempt's own volume goes too).
        task_id = resumed_id()
        leftover = vms.vm_volume("rd", "extra", attempt_tag(task_id, 1))
        with connection("test:///default") as conn:
            storage.create_volume(storage.lookup_pool(conn, POOL), leftover, 16)
        failed = ended(api.coord, put_resumed(
            api.coord, "vm.disk.add", {"name": "rd", "disk": {"size_mib": 16}},
            task_id=task_id, steps_done={"name": "extra"}))
        assert failed.state == TaskState.FAILED and "not supported" in failed.error
        assert volumes() == before
    finally:
        vms.delete_vm(cluster, "rd", force=True)


def test_resumed_nic_remove_counts_a_removed_nic_as_done(api, cluster):
    vms.create_vm(cluster, VmSpec(name="rn", memory_mib=128,
                                  nics=[NicSpec(network="vlan10", mac="52:54:00:00:aa:01")]))
    try:
        first = api.cli("vm", "nic", "remove", "rn", "52:54:00:00:aa:02")
        assert first.returncode == 3  # a first attempt: no such NIC is an error
        done = ended(api.coord, put_resumed(api.coord, "vm.nic.remove",
                                            {"name": "rn", "mac": "52:54:00:00:aa:02"}))
        assert done.state == TaskState.SUCCEEDED, done.error
        assert [n["mac"] for n in done.result["nics"]] == ["52:54:00:00:aa:01"]
    finally:
        vms.delete_vm(cluster, "rn", force=True)


def test_resumed_nic_add_keeps_its_mac_and_adds_no_second_nic(api, cluster):
    vms.create_vm(cluster, VmSpec(name="ra", memory_mib=128,
                                  nics=[NicSpec(network="vlan10", mac="52:54:00:00:bb:01")]))
    try:
        # The dead attempt chose the MAC and plugged the NIC: counted as done.
        done = ended(api.coord, put_resumed(api.coord, "vm.nic.add",
                                            {"name": "ra", "nic": {"network": "vlan10"}},
                                            steps_done={"mac": "52:54:00:00:bb:01"}))
        assert done.state == TaskState.SUCCEEDED, done.error
        assert [n["mac"] for n in done.result["nics"]] == ["52:54:00:00:bb:01"]
    finally:
        vms.delete_vm(cluster, "ra", force=True)
