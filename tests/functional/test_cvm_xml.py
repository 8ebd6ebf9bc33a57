"""The CVM's domain XML against libvirt itself: its schema (virt-xml-validate) and a
definition on the test driver, read back; the recorded node-device XML against the
nodedev schema and listed by libvirt; a failed deployment's undo and `cvm remove`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ahvlite.cluster import cvm, cvmplan
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.virt import cvmhost, guest, nodedev, storage
from ahvlite.virt.conn import close_quietly, connection, open_test_node
from ahvlite.virt.designer import DiskPlacement, HostPolicy
from tests.stores import in_store, sqlite_state

DATA = Path(__file__).resolve().parents[1] / "data" / "cvm"


def cvm_xml(host: str) -> str:
    return cvmplan.design_cvm(cvmplan.CvmDesign(
        host=host, uuid="6c1b5a0e-8f1d-4b7e-a1c2-3d4e5f607182", vcpus=2, memory_mib=4096,
        boot_disk=DiskPlacement(f"/var/lib/libvirt/ahvlite-cvm/cvm-{host}-boot.qcow2"),
        host_cpus=(0, 1, 2, 3), controllers=("0000:3c:00.0", "0000:00:17.0"),
        luns=(cvmplan.Lun("/dev/sdc", True), cvmplan.Lun("/dev/loop0", False)),
        seed_iso=DiskPlacement(f"/var/lib/libvirt/ahvlite-cvm/cvm-{host}-seed.iso",
                               format="raw")),
        HostPolicy(domain_type="kvm")).to_xml()


def validate(path: Path, kind: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virt-xml-validate", str(path), kind], capture_output=True,
                          text=True, timeout=60)


def test_cvm_domain_passes_libvirts_schema(tmp_path):
    path = tmp_path / "cvm.xml"
    path.write_text(cvm_xml("nx1"))
    result = validate(path, "domain")
    assert result.returncode == 0, result.stderr + result.stdout
    # The schema does check: a hostdev without its source address is refused.
    broken = path.read_text().replace("<source>\n        <address", "<nosource>\n        <x")
    broken = broken.replace("</source>\n    </hostdev>", "</nosource>\n    </hostdev>")
    path.write_text(broken)
    assert validate(path, "domain").returncode != 0


@pytest.mark.parametrize("xml", sorted((DATA / "nx-host-nodedev").glob("*.xml")),
                         ids=lambda p: p.stem)
def test_recorded_node_devices_pass_the_nodedev_schema(xml):
    result = validate(xml, "nodedev")
    assert result.returncode == 0, result.stderr


def test_cvm_defined_on_the_test_driver_keeps_what_the_cvm_needs(tmp_path):
    with connection("test:///default") as conn:
        dom = guest.define(conn, cvm_xml("fx1"))
        try:
            dom.set_autostart(True)
            back = dom.config(inactive=True)
            assert [h.address for h in back.devices.hostdevs] == ["0000:3c:00.0",
                                                                  "0000:00:17.0"]
            assert all(h.managed for h in back.devices.hostdevs)
            assert back.cputune.pins == {0: "2", 1: "3"}
            assert back.memory_backing.locked
            assert back.memtune.hard_limit_mib == 4096 + cvmplan.LOCK_OVERHEAD_MIB
            assert [d.device for d in back.devices.disks if d.type == "block"] == ["lun",
                                                                                  "disk"]
            shown = cvm.status_of("fx1", conn, sqlite_state(tmp_path))
            assert shown["autostart"] is True and shown["pinned"] is True
            assert shown["controllers"] == ["0000:3c:00.0", "0000:00:17.0"]
            assert shown["luns"] == ["/dev/sdc", "/dev/loop0"]
            assert shown["labels"]["ahvlite.io/role"] == "cvm"
            assert [n["bridge"] for n in shown["nics"]] == ["virbr0", "br0"]
        finally:
            dom.undefine()
        assert guest.find(conn, "cvm-fx1") is None


def test_test_driver_without_pci_devices_lists_none():
    # test:///default has no PCI node devices: documented as an empty list, no error.
    with connection("test:///default") as conn:
        assert nodedev.list_pci_functions(conn) == []
        assert nodedev.reattach(conn, "0000:3c:00.0") is False  # no such device there


def recorded_node_driver(tmp_path: Path) -> Path:
    """A test-driver host carrying the recorded node devices, so libvirt itself lists
    them and hands us their XML (the test driver keeps no <driver>)."""
    devices = "".join(p.read_text() for p in sorted((DATA / "nx-host-nodedev").glob("*.xml")))
    path = tmp_path / "nx-host.xml"
    path.write_text("<node>\n<cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores>"
                    "<threads>1</threads><active>4</active><mhz>2000</mhz></cpu>"
                    f"<memory>8388608</memory>\n{devices}</node>\n")
    return path


def test_recorded_node_devices_listed_by_libvirt_parse(tmp_path):
    conn = open_test_node(recorded_node_driver(tmp_path))
    try:
        found = nodedev.list_pci_functions(conn)
        # Present and not vfio-pci: nothing to reattach.
        assert nodedev.reattach(conn, "0000:3c:00.0") is False
    finally:
        close_quietly(conn)
    assert [f.address for f in found] == ["0000:00:00.0", "0000:00:17.0", "0000:00:1c.0",
                                          "0000:00:1c.4", "0000:00:1d.0", "0000:3c:00.0",
                                          "0000:3d:00.0", "0000:3e:00.0"]
    by = {f.address: f for f in found}
    assert by["0000:3c:00.0"].kind == "NVMe controller"
    assert by["0000:3c:00.0"].vendor == "Samsung Electronics Co Ltd"
    assert (by["0000:3c:00.0"].iommu_group, by["0000:3c:00.0"].group_members) == (
        13, ("0000:3c:00.0",))
    assert by["0000:00:17.0"].kind == "SATA controller"
    assert by["0000:3e:00.0"].kind == "network" and by["0000:00:1c.0"].bridge
    assert by["0000:3d:00.0"].group_members == ("0000:00:1c.0", "0000:00:1c.4",
                                                "0000:3d:00.0", "0000:3e:00.0")
    # What libvirt lists plans like the recorded files: the isolated NVMe goes.
    plan = cvmplan.plan_cvm("nx1", found, nodedev.read_sysroot(DATA / "nx-host"))
    assert plan.selected == ("0000:3c:00.0",) and plan.deployable


# -- undo and remove on the test driver ------------------------------------------------

def cvm_pool(conn):
    return cvmhost.find_local_pool(conn, cvm.CVM_POOL)


@pytest.fixture
def no_cvm_pool():
    with connection("test:///default") as conn:
        pool = cvm_pool(conn)
        if pool is not None:
            for v in storage.list_volumes(pool):
                storage.delete_volume(pool, v.name)
            cvmhost.remove_pool(pool)
    yield
    with connection("test:///default") as conn:
        pool = cvm_pool(conn)
        if pool is not None:
            cvmhost.remove_pool(pool)


def test_failed_deploy_undo_removes_domain_volumes_the_pool_it_made_and_state(
        tmp_path, no_cvm_pool):
    state = sqlite_state(tmp_path)
    state.put(cvm.STATE_KEY, {"fx4": {"name": "cvm-fx4"}, "other": {"name": "cvm-other"}})
    with connection("test:///default") as conn:
        pool, created = cvmhost.ensure_local_pool(conn, cvm.CVM_POOL, cvm.CVM_POOL_DIR)
        assert created
        storage.create_volume(pool, "cvm-fx4-boot.qcow2", 8)
        dom = guest.define(conn, cvm_xml("fx4"))
        made = cvm._Made(dom=dom, pool=pool, pool_created=True,
                         volumes=["cvm-fx4-boot.qcow2"])
        cvm.undo_deploy(made, "fx4", state, None)
        assert guest.find(conn, "cvm-fx4") is None
        assert cvm_pool(conn) is None
    assert set(state.get(cvm.STATE_KEY)) == {"other"}


def test_failed_deploy_undo_keeps_a_pool_it_did_not_make(tmp_path, no_cvm_pool):
    with connection("test:///default") as conn:
        cvmhost.ensure_local_pool(conn, cvm.CVM_POOL, cvm.CVM_POOL_DIR)
        again, created = cvmhost.ensure_local_pool(conn, cvm.CVM_POOL, cvm.CVM_POOL_DIR)
        assert not created
        storage.create_volume(again, "cvm-fx5-seed.iso", 1)
        cvm.undo_deploy(cvm._Made(pool=again, volumes=["cvm-fx5-seed.iso"]), "fx5",
                        sqlite_state(tmp_path), None)
        kept = cvm_pool(conn)
        assert kept is not None and storage.list_volumes(kept) == []


def test_remove_does_not_create_the_cvm_pool(tmp_path, no_cvm_pool):
    cluster = in_store(ClusterSpec(name="fx", hosts=[HostSpec(name="fx6",
                                                              uri="test:///default")]),
                       tmp_path)
    state = cluster.state
    state.put(cvm.STATE_KEY, {"fx6": {"name": "cvm-fx6", "controllers": [], "volumes": []}})
    out = cvm.remove(cluster, "fx6")
    assert out["deleted_volumes"] == [] and out["undefined"] is False
    with connection("test:///default") as conn:
        assert cvm_pool(conn) is None
    assert state.get(cvm.STATE_KEY) == {}
