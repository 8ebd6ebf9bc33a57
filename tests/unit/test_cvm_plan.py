"""CVM planning on a recorded host (tests/data/cvm): discovery, IOMMU group checks,
the root filesystem check, host checks and the CVM's domain."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from ahvlite.cluster import cvm, cvmplan
from ahvlite.errors import InvalidSpec, OperationFailed, Unsupported
from ahvlite.spec.labels import PINNED_LABEL, ROLE_LABEL, is_pinned
from ahvlite.virt import nodedev
from ahvlite.virt.designer import DiskPlacement, HostPolicy
from ahvlite.virt.nodedev import BlockDevice, HostSysView
from ahvlite.virt.xml.domain import Domain

DATA = Path(__file__).resolve().parents[1] / "data" / "cvm"
NVME_ALONE, NVME_WITH_NIC, NIC, AHCI = ("0000:3c:00.0", "0000:3d:00.0", "0000:3e:00.0",
                                        "0000:00:17.0")


@pytest.fixture(scope="module")
def functions() -> list[nodedev.PciFunction]:
    return [nodedev.parse_pci_nodedev(p.read_text())
            for p in sorted((DATA / "nx-host-nodedev").glob("*.xml"))]


@pytest.fixture(scope="module")
def view() -> HostSysView:
    return nodedev.read_sysroot(DATA / "nx-host")


def by_address(plan: cvmplan.CvmPlan) -> dict[str, cvmplan.ControllerPlan]:
    return {c.address: c for c in plan.controllers}


def test_node_device_xml_gives_class_driver_and_iommu_group(functions):
    nvme = next(f for f in functions if f.address == NVME_WITH_NIC)
    assert nvme.storage and nvme.kind == "NVMe controller" and nvme.driver == "nvme"
    assert nvme.iommu_group == 14
    assert nvme.group_members == ("0000:00:1c.0", "0000:00:1c.4", NVME_WITH_NIC, NIC)
    ahci = next(f for f in functions if f.address == AHCI)
    assert ahci.kind == "SATA controller" and ahci.product.endswith("AHCI Controller")
    bridge = next(f for f in functions if f.address == "0000:00:1c.0")
    assert bridge.bridge and not bridge.storage


def test_sysfs_tree_gives_groups_disks_root_and_modules(view):
    assert view.iommu_groups[NVME_ALONE] == 13 and view.iommu_groups[NIC] == 14
    assert [b.name for b in view.disks_behind(NVME_ALONE)] == ["nvme0n1"]
    assert [b.name for b in view.disks_behind(AHCI)] == ["sda"]  # partitions left out
    assert view.root_chain() == ("sda2", (AHCI,))
    assert {"vfio", "vfio_pci", "vfio_iommu_type1"} <= view.vfio_modules
    assert "intel_iommu=on" in view.cmdline and view.cgroup_controllers is None


def test_isolated_nvme_passes_and_is_chosen(functions, view):
    plan = cvmplan.plan_cvm("nx1", functions, view)
    c = by_address(plan)[NVME_ALONE]
    assert c.passes and c.selected and c.disks == ("nvme0n1 (894 GiB)",)
    assert plan.selected == (NVME_ALONE,) and plan.deployable
    assert all(ch.ok for ch in plan.checks)


def test_group_shared_with_a_nic_is_refused_naming_the_nic(functions, view):
    plan = cvmplan.plan_cvm("nx1", functions, view)
    c = by_address(plan)[NVME_WITH_NIC]
    assert not c.selected and len(c.problems) == 1  # the two root ports are harmless
    assert NIC in c.problems[0].message and "I210" in c.problems[0].message
    assert "igb" in c.problems[0].message and "ACS" in c.problems[0].fix
    asked = cvmplan.plan_cvm("nx1", functions, view, requested=(NVME_WITH_NIC,))
    assert not asked.deployable
    with pytest.raises(InvalidSpec) as err:
        cvm.refuse_blocked(asked)
    assert err.value.field == "controller" and err.value.value == NVME_WITH_NIC
    assert NIC in err.value.message and err.value.hint


def test_a_second_storage_controller_in_the_group_can_go_along(functions, view):
    # Make the NIC an NVMe: now both can be passed through together.
    changed = [dataclasses.replace(f, class_code=0x010802, driver="nvme")
               if f.address == NIC else f for f in functions]
    plan = cvmplan.plan_cvm("nx1", changed, view)
    assert {NVME_WITH_NIC, NIC, NVME_ALONE} == set(plan.selected)
    alone = cvmplan.plan_cvm("nx1", changed, view, requested=(NVME_WITH_NIC,))
    fix = by_address(alone)[NVME_WITH_NIC].problems[0].fix
    assert f"--controller {NIC}" in fix


def test_controller_holding_root_is_refused(functions, view):
    plan = cvmplan.plan_cvm("nx1", functions, view)
    c = by_address(plan)[AHCI]
    assert c.holds_root and not c.selected
    assert "root filesystem" in c.problems[0].message and "sda2" in c.problems[0].message
    with pytest.raises(InvalidSpec) as err:
        cvm.refuse_blocked(cvmplan.plan_cvm("nx1", functions, view, requested=("00:17.0",)))
    assert err.value.value == AHCI and "root filesystem" in err.value.message


def test_root_on_device_mapper_follows_the_slaves(functions, view):
    dm = BlockDevice("dm-0", "253:0", False, 0, ("nvme0n1p2",), "/sys/devices/virtual/block/dm-0")
    part = BlockDevice("nvme0n1p2", "259:3", True, 0, (), "/sys/devices/pci0000:00/0000:00:1d.0"
                       "/0000:3c:00.0/nvme/nvme0/nvme0n1/nvme0n1p2")
    lvm = dataclasses.replace(view, block=(*view.block, dm, part), root_dev="253:0")
    plan = cvmplan.plan_cvm("nx1", functions, lvm)
    assert by_address(plan)[NVME_ALONE].holds_root
    assert by_address(plan)[AHCI].passes  # / moved off the SATA disk
    assert plan.root_device == "dm-0"


def test_unknown_or_malformed_controller_is_refused_with_the_choices(functions, view):
    with pytest.raises(InvalidSpec) as err:
        cvmplan.plan_cvm("nx1", functions, view, requested=(NIC,))
    assert err.value.field == "controller" and NVME_ALONE in err.value.allowed
    with pytest.raises(InvalidSpec) as err:
        cvmplan.plan_cvm("nx1", functions, view, requested=("slot3",))
    assert "PCI address" in err.value.allowed


def test_no_iommu_blocks_passthrough_but_not_lab_luns(functions, view):
    bare = dataclasses.replace(view, iommu_groups={}, cmdline="ro quiet")
    no_groups = [dataclasses.replace(f, iommu_group=None, group_members=()) for f in functions]
    plan = cvmplan.plan_cvm("nx1", no_groups, bare)
    iommu = plan.checks[0]
    assert not iommu.ok and "intel_iommu=on" in (iommu.fix or "")
    assert plan.selected == () and not plan.deployable
    with pytest.raises(InvalidSpec):
        cvm.refuse_blocked(plan)
    lab = cvmplan.plan_cvm("nx1", no_groups, bare, lab_luns=2)
    assert lab.deployable and lab.selected == ()
    cvm.refuse_blocked(lab)
    on_but_off = dataclasses.replace(bare, cmdline="intel_iommu=on")
    check = cvmplan.plan_cvm("nx1", no_groups, on_but_off, lab_luns=1).checks[0]
    assert "firmware" in (check.fix or "") and "intel_iommu=on" in check.detail


def test_missing_vfio_modules_block_with_the_package_to_install(functions, view):
    plan = cvmplan.plan_cvm("nx1", functions,
                            dataclasses.replace(view, vfio_modules=frozenset({"vfio"})))
    vfio = plan.checks[1]
    assert not vfio.ok and "vfio_pci" in vfio.detail and "6.1.0-18-amd64" in (vfio.fix or "")
    with pytest.raises(Unsupported) as err:
        cvm.refuse_blocked(plan)
    assert "vfio_pci" in err.value.message


def test_sysfs_report_cut_short_is_an_error():
    with pytest.raises(OperationFailed):
        nodedev.parse_host_script("#cmdline\nro\n#iommu\n")


def design(**changes) -> Domain:
    base = cvmplan.CvmDesign(
        host="nx1", uuid="0d7f0c8e-52b1-4c1e-9f0a-6a3b1e2f4c11", vcpus=4, memory_mib=16384,
        boot_disk=DiskPlacement("/var/lib/libvirt/ahvlite-cvm/cvm-nx1-boot.qcow2",
                                "cvm-nx1-boot.qcow2"),
        host_cpus=tuple(range(12)), controllers=(NVME_ALONE,),
        luns=(cvmplan.Lun("/dev/sdb", True), cvmplan.Lun("/dev/loop3", False)),
        seed_iso=DiskPlacement("/var/lib/libvirt/ahvlite-cvm/cvm-nx1-seed.iso",
                               "cvm-nx1-seed.iso", "raw"))
    return cvmplan.design_cvm(dataclasses.replace(base, **changes), HostPolicy())


def test_cvm_domain_has_hostdevs_pins_locked_memory_nics_and_labels():
    dom = Domain.parse(design().to_xml())  # through text: what libvirt would get
    assert dom.name == "cvm-nx1" and dom.on_crash == "restart"
    devs = dom.devices
    [hostdev] = list(devs.hostdevs)
    assert hostdev.address == NVME_ALONE and hostdev.managed and hostdev.mode == "subsystem"
    assert dom.cputune.pins == {0: "8", 1: "9", 2: "10", 3: "11"}
    assert dom.memory_backing.locked and dom.memtune.hard_limit_mib == 16384 + 1024
    nics = list(devs.interfaces)
    assert [n.source_bridge for n in nics] == ["virbr0", "br0"]
    assert nics[0].virtualport_type is None and nics[1].virtualport_type == "openvswitch"
    luns = [d for d in devs.disks if d.type == "block"]
    assert [(d.device, d.source_dev, d.target_bus) for d in luns] == [
        ("lun", "/dev/sdb", "scsi"), ("disk", "/dev/loop3", "scsi")]
    assert [b.model for b in devs.memballoons] == ["none"]
    labels = dom.meta.labels
    assert labels[ROLE_LABEL] == "cvm" and is_pinned(labels)
    assert labels[PINNED_LABEL] == "true"
    fw = {e.name: e.value for e in dom.sysinfo.entries}
    assert fw["opt/ahvlite/ip"] == "192.168.5.2/24"


def test_no_memory_cgroup_means_locked_without_hard_limit_and_a_warning(functions, view):
    dom = design(memory_hard_limit=False, mgmt_vlan=30)
    assert dom.memory_backing.locked and dom.memtune is None
    assert list(dom.devices.interfaces)[1].vlan_tags == [30]
    plan = cvmplan.plan_cvm("nx1", functions,
                            dataclasses.replace(view, cgroup_controllers=()), lab_luns=1)
    mem = plan.checks[2]
    assert not mem.ok and not mem.blocking and plan.deployable and not plan.memory_lock_limit


def test_more_vcpus_than_host_cpus_is_refused():
    with pytest.raises(InvalidSpec) as err:
        design(vcpus=4, host_cpus=(0, 1))
    assert err.value.field == "vcpus" and "at most 2" in err.value.allowed


def test_seed_gives_the_virbr0_nic_its_address():
    files = cvmplan.seed_files("nx1")
    net = files["network-config"].decode()
    assert cvmplan.cvm_mac("nx1", "virbr0") in net and "192.168.5.2/24" in net
    assert b"cvm-nx1" in files["meta-data"]


def test_without_cap_sys_resource_memory_stays_unlocked_and_vfio_is_blocked(functions, view):
    capped = dataclasses.replace(view, can_raise_memlock=False)
    lab = cvmplan.plan_cvm("nx1", functions, capped, lab_luns=1)
    assert lab.deployable and not lab.memory_lock
    assert "CAP_SYS_RESOURCE" in lab.checks[2].detail
    vfio = cvmplan.plan_cvm("nx1", functions, capped, requested=(NVME_ALONE,))
    assert not vfio.deployable
    with pytest.raises(Unsupported) as err:
        cvm.refuse_blocked(vfio)
    assert "locked-memory" in err.value.message
    dom = design(lock_memory=False)
    assert dom.memory_backing is None and dom.memtune is None


def test_capability_bounding_set_is_read_from_the_report():
    report = "#capbnd\n{}\n#end\n"
    full = nodedev.parse_host_script(report.format("000001ffffffffff"))
    assert full.can_raise_memlock is True
    assert nodedev.parse_host_script(report.format("00000000a80425fb")).can_raise_memlock \
        is False
    assert nodedev.parse_host_script("#end\n").can_raise_memlock is None


@pytest.mark.parametrize(("changes", "field"), [
    ({"vcpus": 0}, "vcpus"), ({"memory_mib": 10}, "memory_mib")])
def test_bad_sizes_are_refused_naming_the_field(changes, field):
    with pytest.raises(InvalidSpec) as err:
        design(**changes)
    assert err.value.field == field


@pytest.fixture(scope="module")
def btrfs_view(tmp_path_factory) -> HostSysView:
    """The recorded host with / on a btrfs subvolume (recorded mountinfo)."""
    root = tmp_path_factory.mktemp("btrfs") / "nx-host"
    shutil.copytree(DATA / "nx-host", root, symlinks=True)
    shutil.copyfile(DATA / "mountinfo-btrfs-root", root / "proc" / "self" / "mountinfo")
    return nodedev.read_sysroot(root)


def test_btrfs_root_is_read_as_an_unknown_root_device(btrfs_view):
    assert (btrfs_view.root_dev, btrfs_view.root_fstype, btrfs_view.root_source) == (
        "0:31", "btrfs", "/dev/sda2")
    assert btrfs_view.root_chain() == (None, ())


def test_unknown_root_device_blocks_choosing_controllers(functions, btrfs_view):
    plan = cvmplan.plan_cvm("nx1", functions, btrfs_view)
    root = next(c for c in plan.checks if c.name == "root-device")
    assert not root.ok and root.blocking and "--controller" in (root.fix or "")
    assert "cannot tell which controller holds /" in root.detail
    assert "btrfs /dev/sda2" in root.detail and "0:31" in root.detail
    assert not plan.deployable
    assert any("cannot tell which controller holds /" in b for b in plan.blocking)
    with pytest.raises(Unsupported) as err:
        cvm.refuse_blocked(plan)
    assert "cannot tell which controller holds /" in err.value.message and err.value.hint


def test_unknown_root_device_named_controller_goes_with_a_warning(functions, btrfs_view):
    plan = cvmplan.plan_cvm("nx1", functions, btrfs_view, requested=(NVME_ALONE,))
    root = next(c for c in plan.checks if c.name == "root-device")
    assert not root.ok and not root.blocking and "on trust" in root.detail
    assert plan.deployable and plan.selected == (NVME_ALONE,)
    cvm.refuse_blocked(plan)
    # Lab LUNs alone pass nothing through: nothing to block.
    assert cvmplan.plan_cvm("nx1", functions, btrfs_view, lab_luns=1).deployable


def test_known_root_device_is_a_passing_check(functions, view):
    root = next(c for c in cvmplan.plan_cvm("nx1", functions, view).checks
                if c.name == "root-device")
    assert root.ok and "sda2" in root.detail and AHCI in root.detail


@pytest.mark.parametrize(("report", "detail"), [
    ("#root\n0:24 zfs rpool/ROOT/debian\n#end\n", "zfs rpool/ROOT/debian (device 0:24)"),
    ("#root\n0:52 nfs4 srv:/export/root\n#end\n", "nfs4 srv:/export/root"),
    ("#root\n#end\n", "no entry for /"),
    ("#root\n7:0 ext4 /dev/loop0\n#end\n", "loop0, which sits behind no PCI function"),
])
def test_other_unknown_roots_block_too(functions, view, report, detail):
    parsed = nodedev.parse_host_script(report)
    odd = dataclasses.replace(view, root_dev=parsed.root_dev, root_fstype=parsed.root_fstype,
                              root_source=parsed.root_source)
    plan = cvmplan.plan_cvm("nx1", functions, odd)
    root = next(c for c in plan.checks if c.name == "root-device")
    assert not root.ok and detail in root.detail and not plan.deployable
