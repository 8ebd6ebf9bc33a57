"""The VM layer against libvirt's test driver: create, power, hot-plug, delete, undo."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from lxml import etree

from ahvlite.cluster import vms
from ahvlite.controller.kinds import attempt_tag, create_once
from ahvlite.errors import Conflict, InvalidSpec, OperationFailed
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.spec.network import NetworkSpec, VlanNetworkSpec
from ahvlite.spec.vm import BootSpec, DiskSpec, NicSpec, VmSpec
from ahvlite.virt import guest, storage
from ahvlite.virt.conn import connection
from tests.apicluster import api_cluster
from tests.stores import sqlite_state
from tests.testdriver import POOL, domain_names, volumes

CLUSTER = ClusterSpec(
    name="tc", shared_pool=POOL, hosts=[HostSpec(name="h1", uri="test:///default")],
    network=NetworkSpec(networks=[VlanNetworkSpec(name="vlan10", vlan=10)]))
# The cluster's documents (maintenance, CPU level ...) in a real store of its own.
CLUSTER._state = sqlite_state(Path(tempfile.mkdtemp(prefix="ahvlite-test-")))


@pytest.fixture(scope="module")
def image():
    with connection("test:///default") as conn:
        pool = storage.lookup_pool(conn, POOL)
        storage.delete_volume(pool, "image-base")
        storage.create_volume(pool, "image-base", 64)
    yield "base"
    with connection("test:///default") as conn:
        storage.delete_volume(storage.lookup_pool(conn, POOL), "image-base")


def spec(name: str, **over) -> VmSpec:
    values = dict(name=name, vcpus=2, memory_mib=256,
                  disks=[DiskSpec(image="base"), DiskSpec(size_mib=128, bus="virtio")],
                  nics=[NicSpec(network="vlan10"),
                        NicSpec(network="br0", mode="trunk", trunk_vlans=(20, 30))],
                  vtpm=True, boot=BootSpec(firmware="uefi"))
    values.update(over)
    return VmSpec(**values)


def test_full_lifecycle(image):
    info = vms.create_vm(CLUSTER, spec("fv-life"), start=True)
    try:
        assert info.state == "running" and info.host == "h1"
        made = [d["volume"] for d in info.disks]
        assert all(re.fullmatch(rf"vm-fv-life-disk{i}-[0-9a-f]{{8}}\.qcow2", v)
                   for i, v in enumerate(made)), made
        assert set(made) <= volumes()
        shown = vms.show_vm(CLUSTER, "fv-life").to_dict()
        assert {"name", "uuid", "host", "state", "vcpus", "memory_mib", "disks",
                "nics"} <= set(shown)
        assert [d["bus"] for d in shown["disks"]] == ["scsi", "virtio"]
        assert [n["mode"] for n in shown["nics"]] == ["access", "trunk"]
        assert shown["nics"][0]["vlans"] == [10] and shown["nics"][0]["network"] == "vlan10"
        assert shown["firmware"] == "uefi" and shown["vtpm"] and shown["genid"]
        listed, unreachable = vms.list_vms(CLUSTER)
        assert "fv-life" in [v.name for v in listed] and unreachable == {}

        with pytest.raises(Conflict):
            vms.delete_vm(CLUSTER, "fv-life")
        with pytest.raises(InvalidSpec):
            vms.stop_vm(CLUSTER, "fv-life", force=False)
        assert vms.reboot_vm(CLUSTER, "fv-life").state == "running"
        assert vms.shutdown_vm(CLUSTER, "fv-life", timeout_s=5).state == "shutoff"
        assert vms.start_vm(CLUSTER, "fv-life").state == "running"
        assert vms.stop_vm(CLUSTER, "fv-life", force=True).state == "shutoff"
        vms.start_vm(CLUSTER, "fv-life")
        # Hot-plug (vm disk add, vm nic add/remove) needs QEMU: the test driver has no
        # attachDevice. tests/lab/test_vms.py covers it.
    finally:
        result = vms.delete_vm(CLUSTER, "fv-life", force=True)
    assert sorted(result["deleted_volumes"]) == sorted(made)
    assert not {v for v in volumes() if v.startswith("vm-fv-life")}
    assert "fv-life" not in domain_names()


def test_clone_by_backing_file_or_full_copy(image):
    info = vms.create_vm(CLUSTER, spec("fv-clone", disks=[
        DiskSpec(image="base"), DiskSpec(image="base", full_clone=True)]))
    try:
        with connection("test:///default") as conn:
            pool = storage.lookup_pool(conn, POOL)
            linked, full = (storage.volume_info(storage.find_volume(pool, d["volume"]))
                            for d in info.disks)
        assert linked.backing and linked.backing.endswith("image-base")
        assert full.backing is None
    finally:
        vms.delete_vm(CLUSTER, "fv-clone")


@pytest.mark.parametrize(("over", "error", "field"), [
    ({"disks": [DiskSpec(image="nosuch")]}, InvalidSpec, "disk.image"),
    ({"nics": [NicSpec(network="vlan99")]}, InvalidSpec, "nic.network"),
    ({"memory_mib": 999_999}, InvalidSpec, "memory_mib"),
    ({"name": "test"}, Conflict, None),  # the test driver's own VM: names are unique
])
def test_bad_input_creates_nothing(image, over, error, field):
    before_vols, before_doms = volumes(), domain_names()
    with pytest.raises(error) as e:
        vms.create_vm(CLUSTER, spec(**{"name": "fv-bad", **over}))
    if field:
        assert e.value.field == field
    assert volumes() == before_vols and domain_names() == before_doms


def test_a_failed_start_undoes_volumes_and_definition(image, monkeypatch):
    before_vols, before_doms = volumes(), domain_names()

    def refuse(self):
        raise OperationFailed(f"start {self.name}: refused for the test")

    monkeypatch.setattr(guest.Guest, "start", refuse)
    with pytest.raises(OperationFailed):
        vms.create_vm(CLUSTER, spec("fv-undo"), start=True)
    assert volumes() == before_vols and domain_names() == before_doms


def test_overcommit_vm_has_a_balloon_and_starts_below_its_memory(image):
    info = vms.create_vm(CLUSTER, spec("fv-oc", overcommit=True, memory_mib=1024,
                                       disks=[], nics=[]))
    try:
        assert info.overcommit and info.current_memory_mib < info.memory_mib == 1024
        with connection("test:///default") as conn:
            xml = etree.fromstring(guest.lookup(conn, "fv-oc").xml().encode())
        assert xml.find("devices/memballoon").get("freePageReporting") == "on"
    finally:
        vms.delete_vm(CLUSTER, "fv-oc")


# -- the CLI: one message, a distinct exit code, never a traceback ----------------------

@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """A controller serving CLUSTER's hosts through its API (the CLI's only way in)."""
    with connection("test:///default"), \
            api_cluster(tmp_path_factory.mktemp("lifecycle"), CLUSTER) as c:
        yield c


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["vm", "create", "a b"], 2, "name='a b' is not valid"),
    (["vm", "create", "a<b"], 2, "name='a<b'"),
    (["vm", "create", "v", "--memory-mib", "32"], 2, "memory_mib=32"),
    (["vm", "create", "v", "--memory-mib", "99999999"], 2, "memory_mib=99999999"),
    (["vm", "create", "v", "--disk", "1G,bus=floppy"], 2, "one of scsi, virtio, sata, ide"),
    (["vm", "create", "v", "--disk", "nosuch"], 2, "disk.image='nosuch'"),
    (["vm", "create", "v", "--nic", "vlan99"], 2, "nic.network='vlan99'"),
    (["vm", "create", "test"], 4, "already exists"),
    (["vm", "show", "nosuch"], 3, "no VM named 'nosuch'"),
    (["vm", "stop", "test"], 2, "--force"),
    (["vm", "delete", "test"], 4, "is running"),
    # host paths outside the cluster's pool and image directory
    (["vm", "create", "v", "--kernel", "/etc/shadow"], 2, "boot.kernel='/etc/shadow'"),
    (["vm", "create", "v", "--kernel", "/default-pool/k", "--initrd", "/root/.ssh/id_rsa"],
     2, "boot.initrd='/root/.ssh/id_rsa'"),
    # control characters (XML cannot carry them; a terminal would obey them)
    (["vm", "create", "v", "--label", "k=a\x01b"], 2, "labels.k='a\\x01b'"),
    (["vm", "create", "v", "--label", "k\x1b[2J=b"], 2, "labels (key)="),
    (["vm", "create", "v", "--label", "k=\u0085"], 2, "labels.k="),
    (["vm", "create", "v", "--fw-cfg", "opt/x=a\x07"], 2, "fw_cfg.opt/x="),
    (["vm", "create", "v", "--kernel", "/default-pool/k", "--cmdline", "a\nb"], 2,
     "boot.cmdline="),
    # input that looks like the terminal renderer's markup is shown as it is
    (["vm", "create", "a[/x]"], 2, "name='a[/x]'"),
])
def test_cli_errors(api, args, code, needle):
    r = api.cli(*args)
    assert r.returncode == code, r.stdout + r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_cli_create_show_list_json(api):
    r = api.cli("vm", "create", "fv-cli", "--cpus", "2", "--memory-mib", "128",
                "--disk", "64M", "--disk", "64M,bus=virtio", "--nic", "vlan10",
                "--nic", "br0:trunk=10,20", "--vtpm", "--uefi", "--start", "--json")
    assert r.returncode == 0, r.stderr
    try:
        vm = json.loads(r.stdout)
        assert vm["state"] == "running" and vm["vcpus"] == 2 and len(vm["disks"]) == 2
        assert [n["mode"] for n in vm["nics"]] == ["access", "trunk"]
        r = api.cli("vm", "list", "--json")
        assert r.returncode == 0 and isinstance(json.loads(r.stdout), list)
        assert "fv-cli" in [v["name"] for v in json.loads(r.stdout)]
        r = api.cli("vm", "show", "test", "--json")
        assert json.loads(r.stdout)["name"] == "test"
    finally:
        r = api.cli("vm", "delete", "fv-cli", "--force", "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(r.stdout)["deleted_volumes"]) == sorted(
        d["volume"] for d in vm["disks"])
    assert "fv-cli" not in domain_names()


def test_metadata_updates_reach_libvirt(image):
    vms.create_vm(CLUSTER, spec("fv-meta", disks=[], nics=[]))
    try:
        with connection("test:///default") as conn:
            dom = guest.lookup(conn, "fv-meta")
            meta = dom.config().ensure_meta()
            meta.set_disk("extra", "sdq", "vm-fv-meta-extra.qcow2")
            meta.labels = {"k": "v"}
            dom.set_metadata(meta)
        info = vms.show_vm(CLUSTER, "fv-meta")
        assert info.labels == {"k": "v"}
        with connection("test:///default") as conn:
            back = guest.lookup(conn, "fv-meta").config()
        assert back.meta is not None and back.meta.volumes == {"extra": "vm-fv-meta-extra.qcow2"}
    finally:
        vms.delete_vm(CLUSTER, "fv-meta")


def test_create_task_step_is_safe_to_repeat():
    # test:///default keeps its state only while a connection is open.
    with connection("test:///default"):
        _create_twice()


def _create_twice() -> None:
    once = VmSpec(name="fv-once", memory_mib=128, disks=[DiskSpec(size_mib=16)])
    first = create_once(CLUSTER, once, host=None, start=False, task_id="t1", attempt=1)
    # A new leader re-runs the step: the VM of that UUID counts as done (and is started).
    again = create_once(CLUSTER, once, host=None, start=True, task_id="t1", attempt=2)
    assert again["uuid"] == first["uuid"] and again["state"] == "running"
    assert "fv-once" in domain_names()
    # A dead attempt's half-made volumes (its tag) are cleared before the create is tried
    # again; a same-named volume of another attempt, and one a VM uses, are not.
    half = VmSpec(name="fv-half", memory_mib=128, disks=[DiskSpec(size_mib=16)],
                  boot=BootSpec(firmware="uefi"))
    disk = half.disk_names()[0]
    leftover = vms.vm_volume("fv-half", disk, attempt_tag("t2", 1))
    nvram = vms.nvram_volume("fv-half", attempt_tag("t2", 1))
    other = vms.vm_volume("fv-half", disk, "0badc0de")
    used = vms.vm_volume("fv-half", disk, attempt_tag("t2", 2))
    with connection("test:///default") as conn:
        pool = storage.lookup_pool(conn, POOL)
        for vol in (leftover, nvram, other, used):
            storage.create_volume(pool, vol, 16)
    vms.create_vm(CLUSTER, VmSpec(name="fv-user", memory_mib=128,
                                  disks=[DiskSpec(volume=used)]))
    made = create_once(CLUSTER, half, host=None, start=False, task_id="t2", attempt=3)
    assert "fv-half" in domain_names()
    assert leftover not in volumes() and nvram not in volumes()
    assert {other, used} <= volumes()
    assert made["disks"][0]["volume"] == vms.vm_volume("fv-half", disk, attempt_tag("t2", 3))
    for name in ("fv-once", "fv-half", "fv-user"):
        vms.delete_vm(CLUSTER, name, force=True)
    with connection("test:///default") as conn:
        storage.delete_volume(storage.lookup_pool(conn, POOL), other)


class _Task:
    id = "0001"
    attempts = 1


class _Ctx:
    """The slice of TaskContext the VM kinds use (our own interface)."""

    def __init__(self, params):
        self.params = params
        self.task = _Task()

    def progress(self, pct, message):
        pass

    def step(self, name, fn):
        return fn()

    def check_leader(self):
        return 1


def test_leader_side_tasks_check_ha_admission(tmp_path, image):
    # A task can be submitted by anything, not only the CLI (which checks first): the
    # leader checks again when it runs a power-on. One host in guarantee mode (RF2) has
    # nowhere to restart anything, so every protected power-on must be refused.
    from ahvlite.cluster.inventory import save_cluster
    from ahvlite.cluster.legacy import open_cluster_file
    from ahvlite.controller.ha.config import change_settings
    from ahvlite.controller.kinds import registry

    path = tmp_path / "cluster.yaml"
    save_cluster(path, CLUSTER)
    cluster = open_cluster_file(path)
    change_settings(cluster.state, mode="guarantee")
    kinds = registry(lambda: cluster)
    create = kinds["vm.spec.create"]
    params = create.validate({"spec": spec("adm1").model_dump(mode="json"), "start": True})
    with pytest.raises(Conflict) as exc:
        create.run(_Ctx(params))
    assert "HA guarantee" in exc.value.message and "MiB missing" in exc.value.message
    assert "adm1" not in domain_names()  # refused before anything was made
    # Created stopped, then a start task: refused too, and it stays off.
    made = create.run(_Ctx(create.validate({"spec": spec("adm1").model_dump(mode="json")})))
    try:
        assert made["state"] == "shutoff"
        life = kinds["vm.lifecycle"]
        with pytest.raises(Conflict):
            life.run(_Ctx(life.validate({"action": "start", "name": "adm1"})))
        change_settings(cluster.state, mode="default")
        assert life.run(_Ctx(life.validate({"action": "start",
                                            "name": "adm1"})))["state"] == "running"
    finally:
        vms.delete_vm(CLUSTER, "adm1", force=True)
