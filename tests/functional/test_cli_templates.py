"""``ahvlite template ...`` through a real controller's API: capture, versions, the
active version, deploy (each VM its own step, undone on its own; HA admission per
power-on), and what resumed attempts of a dead leader's task do.

On libvirt's test driver a VM with disks gets a NoCloud seed ISO, which needs a volume
upload the driver lacks: deploys of such templates fail (and are undone) here; the
deploys that succeed use a template without disks. tests/lab/test_vms.py deploys real
guests.
"""

from __future__ import annotations

import json
import uuid

import pytest

from ahvlite.cluster import templates, vms
from ahvlite.controller.ha.config import change_settings
from ahvlite.controller.kinds import VM_UUID_NAMESPACE
from ahvlite.controller.tasks import TaskState
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.spec.vm import DiskSpec, VmSpec
from ahvlite.virt import guest, storage
from ahvlite.virt.conn import connection
from tests.apicluster import api_cluster
from tests.taskrecords import ended, put_resumed, resumed_id
from tests.testdriver import POOL, domain_names, volumes

pytestmark = pytest.mark.functional

SPEC = ClusterSpec(name="ctp", shared_pool=POOL,
                   hosts=[HostSpec(name="h1", uri="test:///default")])


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with connection("test:///default"), \
            api_cluster(tmp_path_factory.mktemp("ctp"), SPEC) as c:
        yield c


@pytest.fixture(scope="module")
def cluster(api):
    return api.state.spec()


@pytest.fixture(scope="module")
def tp(api, cluster):
    """Template tp: v1 from a VM with a disk, v2 (2 vCPUs, no disk) from another; v1
    active."""
    vms.create_vm(cluster, VmSpec(name="tsrc", memory_mib=128,
                                  disks=[DiskSpec(size_mib=16)]))
    vms.create_vm(cluster, VmSpec(name="tsrc2", vcpus=2, memory_mib=128))
    made = api.cli("template", "create", "tp", "--from-vm", "tsrc", "--json")
    assert made.returncode == 0, made.stderr
    added = api.cli("template", "version", "add", "tp", "--from-vm", "tsrc2", "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["active_version"] == 2
    active = api.cli("template", "set-active", "tp", "1", "--json")
    assert active.returncode == 0 and json.loads(active.stdout)["active_version"] == 1
    yield json.loads(made.stdout)
    for vm in ("tsrc", "tsrc2"):
        vms.delete_vm(cluster, vm, force=True)


def drop(cluster, *vm_names: str) -> None:
    for name in vm_names:
        if name in domain_names():
            vms.delete_vm(cluster, name, force=True)


def test_capture_versions_list(api, tp):
    assert tp["name"] == "tp" and [v["from_vm"] for v in tp["versions"]] == ["tsrc"]
    assert tp["versions"][0]["disks"][0]["volume"] == "tmpl-tp-v1-disk0.qcow2"
    assert "tmpl-tp-v1-disk0.qcow2" in volumes()
    versions = json.loads(api.cli("template", "versions", "tp", "--json").stdout)
    assert versions["active_version"] == 1
    assert [(v["version"], v["from_vm"], v["vcpus"]) for v in versions["versions"]] == [
        (1, "tsrc", 1), (2, "tsrc2", 2)]
    human = api.cli("template", "versions", "tp")
    assert human.returncode == 0 and "* 1" in human.stdout and "tsrc2" in human.stdout
    listed = json.loads(api.cli("template", "list", "--json").stdout)
    assert [(t["name"], t["active_version"], len(t["versions"])) for t in listed] == [
        ("tp", 1, 2)]


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["template", "create", "tp", "--from-vm", "tsrc"], 4, "template 'tp' exists"),
    (["template", "create", "tx", "--from-vm", "test"], 4, "shut it down first"),
    (["template", "create", "tx", "--from-vm", "nosuch"], 3, "no VM named 'nosuch'"),
    (["template", "set-active", "tp", "9"], 3, "has no version 9"),
    (["template", "version", "add", "nosuch", "--from-vm", "tsrc"], 3, "no template"),
    (["template", "deploy", "nosuch"], 3, "no template named 'nosuch'"),
    (["template", "deploy", "tp", "--count", "0"], 2, "count=0"),
    (["template", "deploy", "tp", "--host", "h9"], 2, "host='h9'"),
])
def test_mistakes_are_refused_before_anything_is_made(api, tp, args, code, needle):
    before_vols, before_names = volumes(), domain_names()
    r = api.cli(*args)
    assert r.returncode == code, r.stdout + r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert volumes() == before_vols and domain_names() == before_names


def test_one_name_taken_refuses_the_whole_batch(api, cluster, tp):
    vms.create_vm(cluster, VmSpec(name="tes7", memory_mib=64))
    before_vols, before_names = volumes(), domain_names()
    try:
        r = api.cli("template", "deploy", "tp", "--prefix", "tes", "--count", "20",
                    "--version", "2")
        assert r.returncode == 4 and "'tes7' already exists" in r.stderr, r.stderr
        assert volumes() == before_vols and domain_names() == before_names
    finally:
        drop(cluster, "tes7")


def test_deploy_places_starts_and_labels_each_vm(api, cluster, tp):
    r = api.cli("template", "deploy", "tp", "--version", "2", "--count", "3", "--prefix",
                "d", "--json")
    try:
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["failed"] == {} and out["version"] == 2
        made = {v["name"]: v for v in out["vms"]}
        assert sorted(made) == ["d1", "d2", "d3"]
        assert all(v["state"] == "running" and v["vcpus"] == 2 and v["template"] == "tp"
                   for v in made.values())
        assert len({v["uuid"] for v in made.values()}) == 3
        assert len({v["genid"] for v in made.values()}) == 3
    finally:
        drop(cluster, "d1", "d2", "d3")


def test_a_vm_that_fails_is_undone_on_its_own(api, cluster, tp, monkeypatch):
    power_on = guest.Guest.start

    def refuse_p2(self):  # the controller runs in this process: its start of p2 fails
        if self.name == "p2":
            from ahvlite.errors import OperationFailed

            raise OperationFailed("start p2: refused for the test")
        power_on(self)

    monkeypatch.setattr(guest.Guest, "start", refuse_p2)
    r = api.cli("template", "deploy", "tp", "--version", "2", "--count", "3", "--prefix",
                "p")
    try:
        assert r.returncode == 9, r.stderr
        assert "p2" in r.stderr and "refused for the test" in r.stderr
        assert {"p1", "p3"} <= domain_names() and "p2" not in domain_names()
        assert all(vms.show_vm(cluster, n).state == "running" for n in ("p1", "p3"))
    finally:
        drop(cluster, "p1", "p3")


def test_vms_whose_seed_cannot_be_written_are_undone(api, cluster, tp):
    before_vols, before_names = volumes(), domain_names()
    r = api.cli("template", "deploy", "tp", "--count", "2", "--prefix", "s")
    assert r.returncode == 9 and "no VM of tp was deployed" in r.stderr, r.stderr
    assert volumes() == before_vols and domain_names() == before_names


def test_each_power_on_is_admitted_by_ha(api, cluster, tp):
    # One host in guarantee mode has nowhere to restart a VM: every start is refused,
    # and with nothing started the VMs are not even made. Without --start they are.
    change_settings(api.state, mode="guarantee")
    try:
        before = domain_names()
        r = api.cli("template", "deploy", "tp", "--version", "2", "--count", "2",
                    "--prefix", "g")
        assert r.returncode == 9 and "MiB missing" in r.stderr, r.stderr
        assert domain_names() == before
        r = api.cli("template", "deploy", "tp", "--version", "2", "--count", "2",
                    "--prefix", "g", "--no-start", "--json")
        assert r.returncode == 0, r.stderr
        assert [v["state"] for v in json.loads(r.stdout)["vms"]] == ["shutoff", "shutoff"]
    finally:
        change_settings(api.state, mode="default")
        drop(cluster, "g1", "g2")


# -- resumed attempts -------------------------------------------------------------------

def test_a_resumed_deploy_keeps_what_the_dead_attempt_made(api, cluster, tp):
    # The dead leader recorded its plan and made r1 (found by its UUID), not r2.
    task_id = resumed_id()

    def uuid_of(vm: str) -> str:
        return str(uuid.uuid5(VM_UUID_NAMESPACE, f"{task_id}/{vm}"))

    plan = templates.plan_deploy(cluster, "tp", count=2, prefix="r", version=2,
                                 uuid_of=uuid_of)
    r1 = VmSpec(**plan["vms"][0]["spec"])
    vms.create_vm(cluster, r1, host="h1", start=True)
    vms.set_labels(cluster, "r1", {"made-by": "the dead attempt"})  # gone if redefined
    params = {"name": "tp", "count": 2, "prefix": "r", "version": 2, "user_data": None,
              "start": True, "host": None}
    try:
        end = ended(api.coord, put_resumed(api.coord, "template.deploy", params,
                                           task_id=task_id, steps_done={"plan": plan}))
        assert end.state == TaskState.SUCCEEDED, end.error
        assert [v["name"] for v in end.result["vms"]] == ["r1", "r2"]
        assert end.result["vms"][0]["uuid"] == r1.uuid and end.attempts == 2
        listed = json.loads(api.cli("vm", "list", "--json").stdout)
        assert [v["name"] for v in listed].count("r1") == 1
        with connection("test:///default") as conn:  # its persistent definition too
            kept = guest.lookup(conn, "r1").config(inactive=True)
        assert kept.meta is not None and kept.meta.labels["made-by"] == "the dead attempt"
    finally:
        drop(cluster, "r1", "r2")


def test_a_resumed_capture_clears_its_leftovers_and_stores_once(api, cluster, tp):
    vms.create_vm(cluster, VmSpec(name="csrc", memory_mib=128,
                                  disks=[DiskSpec(size_mib=16)]))
    try:
        # The dead attempt copied a disk but stored nothing: the copy goes, then again.
        leftover = templates.template_volume("tr", 1, "disk0")
        with connection("test:///default") as conn:
            storage.create_volume(storage.lookup_pool(conn, POOL), leftover, 3)
        end = ended(api.coord, put_resumed(api.coord, "template.create",
                                           {"name": "tr", "from_vm": "csrc"}))
        assert end.state == TaskState.SUCCEEDED, end.error
        assert [v["version"] for v in end.result["versions"]] == [1]
        with connection("test:///default") as conn:
            pool = storage.lookup_pool(conn, POOL)
            assert storage.volume_info(storage.find_volume(pool, leftover)).capacity_mib == 16
        # The dead attempt stored version 2 but did not record it: stored once.
        templates.store_version(api.state, "tr", templates.capture(cluster, "tr", 2, "csrc"))
        end = ended(api.coord, put_resumed(
            api.coord, "template.version.add",
            {"name": "tr", "from_vm": "csrc", "activate": True}, steps_done={"number": 2}))
        assert end.state == TaskState.SUCCEEDED, end.error
        assert [v["version"] for v in end.result["versions"]] == [1, 2]
    finally:
        api.state.delete_doc("templates", "tr")
        with connection("test:///default") as conn:
            pool = storage.lookup_pool(conn, POOL)
            for v in (1, 2):
                storage.delete_volume(pool, templates.template_volume("tr", v, "disk0"))
        drop(cluster, "csrc")
