"""The CVM, planned: which storage controllers a host can give its controller VM, the
host checks passthrough needs, and the CVM's domain. Pure: facts in, plan and XML out.

The facts come from :mod:`ahvlite.virt.nodedev` (libvirt's node devices plus the
host's sysfs). Every refusal says what is wrong and how to fix it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from ahvlite.errors import InvalidSpec
from ahvlite.spec.errors import build
from ahvlite.spec.labels import PINNED_LABEL, ROLE_LABEL
from ahvlite.spec.vif import BridgeNic, OvsAccessNic
from ahvlite.spec.vm import DiskSpec, VmSpec
from ahvlite.virt import designer
from ahvlite.virt.designer import Design, DiskPlacement, HostPolicy
from ahvlite.virt.nodedev import (
    HostSysView,
    PciFunction,
    is_bridge,
    is_storage,
    node_device_name,
    normalize_address,
)
from ahvlite.virt.xml.devices import MemBalloon
from ahvlite.virt.xml.domain import Domain

CVM_ROLE = "cvm"
CVM_HOST_LABEL = "ahvlite.io/cvm-host"
VIRBR0 = "virbr0"
CVM_ADDRESS = "192.168.5.2/24"  # AHV's CVM side of the internal host <-> CVM network
MGMT_BRIDGE = "br0"
DEFAULT_VCPUS = 8
DEFAULT_MEMORY_MIB = 16384
# QEMU's own memory beyond the guest's (device state, VFIO's IOMMU mappings): libvirt's
# documentation suggests guest memory plus 1 GiB as the locked-memory limit with VFIO.
LOCK_OVERHEAD_MIB = 1024
VFIO_MODULES = ("vfio", "vfio_pci", "vfio_iommu_type1")
IOMMU_FIX = ("enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup, add "
             "'intel_iommu=on iommu=pt' (Intel) or 'amd_iommu=on iommu=pt' (AMD) to "
             "GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub and reboot")


def cvm_name(host: str) -> str:
    return f"cvm-{host}"


def cvm_mac(host: str, nic: str) -> str:
    """Stable MACs: a redeployed CVM keeps its addresses on virbr0 and br0."""
    digest = hashlib.sha256(f"ahvlite-cvm/{host}/{nic}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    blocking: bool = True  # False: a warning, deployment goes on


@dataclass(frozen=True)
class Problem:
    message: str
    fix: str


@dataclass(frozen=True)
class ControllerPlan:
    address: str
    kind: str
    vendor: str | None
    product: str | None
    driver: str | None
    iommu_group: int | None
    group_members: tuple[str, ...]
    disks: tuple[str, ...]  # "nvme0n1 (894 GiB)"
    holds_root: bool
    selected: bool
    problems: tuple[Problem, ...] = ()

    @property
    def passes(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class CvmPlan:
    host: str
    name: str
    checks: tuple[Check, ...]
    controllers: tuple[ControllerPlan, ...]
    lab_luns: int
    root_device: str | None
    memory_lock: bool  # whether the CVM's memory can be locked at all
    memory_lock_limit: bool  # whether libvirt can enforce a hard limit (memory cgroup)
    blocking: tuple[str, ...] = field(default=())  # what stops a deployment, with fixes

    @property
    def selected(self) -> tuple[str, ...]:
        return tuple(c.address for c in self.controllers if c.selected)

    @property
    def deployable(self) -> bool:
        return not self.blocking

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["selected"] = list(self.selected)
        out["deployable"] = self.deployable
        for c, plan in zip(out["controllers"], self.controllers, strict=True):
            c["passes"] = plan.passes
        return out


def _size(nbytes: int) -> str:
    gib = nbytes / 1024 ** 3
    return f"{gib:.0f} GiB" if gib >= 1 else f"{nbytes // 1024 ** 2} MiB"


def _functions(functions: list[PciFunction], view: HostSysView) -> dict[str, PciFunction]:
    """libvirt's view, completed from sysfs (drivers without node devices, groups)."""
    by_addr = {f.address: f for f in functions}
    groups: dict[int, list[str]] = {}
    for addr, g in view.iommu_groups.items():
        groups.setdefault(g, []).append(addr)
    for addr, (cls, driver) in view.pci.items():
        if addr in by_addr:
            continue
        grp = view.iommu_groups.get(addr)
        by_addr[addr] = PciFunction(
            name=node_device_name(addr), address=addr, class_code=cls, driver=driver,
            iommu_group=grp,
            group_members=tuple(sorted(groups[grp])) if grp is not None else ())
    for addr, f in list(by_addr.items()):
        if f.iommu_group is None and addr in view.iommu_groups:
            g = view.iommu_groups[addr]
            by_addr[addr] = PciFunction(**{**asdict(f), "iommu_group": g,
                                           "group_members": tuple(sorted(groups[g]))})
    return by_addr


def host_checks(view: HostSysView, functions: dict[str, PciFunction]) -> list[Check]:
    words = [w for w in view.cmdline.split()
             if w.startswith(("intel_iommu=", "amd_iommu=", "iommu="))]
    groups = {g for g in view.iommu_groups.values()} | {
        f.iommu_group for f in functions.values() if f.iommu_group is not None}
    args = " ".join(words) or "none"
    if groups:
        iommu = Check("iommu", True, f"{len(groups)} IOMMU groups; kernel arguments: {args}")
    elif "intel_iommu=on" in words or "amd_iommu=on" in words:
        iommu = Check("iommu", False,
                      f"the kernel has {args} but /sys/kernel/iommu_groups is empty",
                      "enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup "
                      "and reboot")
    else:
        iommu = Check("iommu", False, "/sys/kernel/iommu_groups is empty: the IOMMU is "
                      f"off (kernel arguments: {args})", IOMMU_FIX)
    missing = [m for m in VFIO_MODULES if m not in view.vfio_modules]
    release = view.kernel_release or "the running kernel"
    if missing:
        vfio = Check("vfio", False,
                     f"no {', '.join(missing)} module for {release} (modules.dep, "
                     "modules.builtin, /sys/module)",
                     f"install the modules of {release} (Debian: linux-image-{release}; "
                     f"Ubuntu: linux-modules-extra-{release}) so `modprobe vfio-pci` works")
    else:
        vfio = Check("vfio", True, f"{', '.join(VFIO_MODULES)} available for {release}")
    if view.can_raise_memlock is False:
        # VFIO pins all guest memory for DMA, so without this no controller can go;
        # a CVM with lab LUNs only runs with its memory unlocked.
        memory = Check("memory-lock", False,
                       "libvirt cannot raise QEMU's locked-memory limit: CAP_SYS_RESOURCE is "
                       "not in the capability bounding set (a restricted container?)",
                       "run libvirtd on a VM or bare-metal host with CAP_SYS_RESOURCE")
    elif view.cgroup_controllers is None or "memory" in view.cgroup_controllers:
        memory = Check("memory-lock", True,
                       "locked memory gets a hard limit (libvirt has the memory cgroup)",
                       blocking=False)
    else:
        memory = Check("memory-lock", False,
                       "libvirt's qemu.conf cgroup_controllers leaves out memory: the CVM's "
                       "memory is locked without a hard limit", "add \"memory\" to "
                       "cgroup_controllers in /etc/libvirt/qemu.conf and restart libvirtd",
                       blocking=False)
    return [iommu, vfio, memory]


def root_check(view: HostSysView, root_name: str | None, root_chain: tuple[str, ...],
               *, named: bool) -> Check:
    """Whether the controller holding ``/`` is known. Passing it through takes the host
    down, so an unknown one blocks choosing controllers; ``named`` (the operator listed
    them with --controller) turns that into a warning."""
    if root_chain:
        return Check("root-device", True,
                     f"/ is on {root_name}, behind {', '.join(root_chain)}", blocking=False)
    if root_name is not None:
        what = f"/ is on {root_name}, which sits behind no PCI function"
    elif view.root_dev is None:
        what = "/proc/self/mountinfo has no entry for /"
    else:
        fs = " ".join(x for x in (view.root_fstype or "a filesystem", view.root_source) if x)
        what = (f"/ is {fs} (device {view.root_dev}), which is no block device of the "
                "host (btrfs, ZFS, overlay or a network filesystem)")
    detail = f"cannot tell which controller holds /: {what}"
    if named:
        return Check("root-device", False, detail + "; passing the named controllers "
                     "through on trust", "make sure none of them holds / (findmnt /, "
                     "lsblk -s, zpool status, btrfs filesystem show /)", blocking=False)
    return Check("root-device", False, detail,
                 "find the disks under / (findmnt /, lsblk -s, zpool status, btrfs "
                 "filesystem show /) and name the controllers the CVM may take with "
                 "--controller")


def _controller_problems(f: PciFunction, selected: set[str], root_chain: tuple[str, ...],
                         root_name: str | None, by_addr: dict[str, PciFunction],
                         iommu_ok: bool) -> list[Problem]:
    problems = []
    if f.address in root_chain:
        problems.append(Problem(
            f"holds the host's root filesystem ({root_name} is behind {f.address})",
            "leave it to the host and pass the other controllers (--controller), or move "
            "the host's boot disk to a device on a controller of its own (AHV boots from "
            "a SATA DOM or M.2 the CVM does not take)"))
    if f.iommu_group is None:
        problems.append(Problem("has no IOMMU group", IOMMU_FIX if not iommu_ok else
                                "check that the IOMMU covers this slot (firmware setup)"))
        return problems
    for m in f.group_members:
        if m == f.address or m in selected:
            continue
        other = by_addr.get(m)
        if other is not None and is_bridge(other.class_code):
            continue  # bridges stay with pcieport; VFIO accepts them in the group
        what = other.describe() if other is not None else f"{m} (unknown device)"
        also = (f"pass it through as well (--controller {m})"
                if other is not None and is_storage(other.class_code)
                else "leave this controller to the host")
        problems.append(Problem(
            f"shares IOMMU group {f.iommu_group} with {what}, which would have to leave "
            "the host with it",
            f"move {f.address} to a slot with an IOMMU group of its own (a CPU root port, "
            f"or one with ACS), or {also}"))
    return problems


def plan_cvm(host: str, functions: list[PciFunction], view: HostSysView, *,
             requested: tuple[str, ...] = (), lab_luns: int = 0) -> CvmPlan:
    """What ``host`` can pass to its CVM and why; ``requested`` controllers are checked,
    otherwise every controller that passes is chosen (none when only lab LUNs are given)."""
    by_addr = _functions(functions, view)
    storage = {a: f for a, f in sorted(by_addr.items()) if is_storage(f.class_code)}
    wanted: list[str] = []
    for raw in requested:
        addr = normalize_address(raw)
        if addr is None:
            raise InvalidSpec("controller", raw, "a PCI address like 0000:3c:00.0")
        if addr not in storage:
            known = ", ".join(f"{a} ({f.kind})" for a, f in storage.items()) or "none found"
            raise InvalidSpec("controller", raw,
                              f"one of {host}'s storage controllers: {known}",
                              hint=f"`ahvlite cvm plan {host}` lists them")
        if addr not in wanted:
            wanted.append(addr)
    checks = host_checks(view, by_addr)
    iommu_ok = checks[0].ok
    root_name, root_chain = view.root_chain()
    checks.append(root_check(view, root_name, root_chain, named=bool(wanted)))

    def problems_with(selected: set[str]) -> dict[str, list[Problem]]:
        return {a: _controller_problems(f, selected, root_chain, root_name, by_addr,
                                        iommu_ok) for a, f in storage.items()}

    if wanted or lab_luns:
        selected = set(wanted)
    else:
        # Start from every controller; drop those that cannot go until the rest holds
        # (two controllers sharing a group go together or not at all).
        selected = set(storage)
        while True:
            bad = {a for a, p in problems_with(selected).items() if a in selected and p}
            if not bad:
                break
            selected -= bad
    problems = problems_with(selected)
    controllers = tuple(ControllerPlan(
        address=a, kind=f.kind, vendor=f.vendor, product=f.product, driver=f.driver,
        iommu_group=f.iommu_group, group_members=f.group_members,
        disks=tuple(f"{b.name} ({_size(b.size_bytes)})" for b in view.disks_behind(a)),
        holds_root=a in root_chain, selected=a in selected, problems=tuple(problems[a]))
        for a, f in storage.items())
    blocking = []
    for c in controllers:
        if c.selected:
            blocking += [f"{c.address} {p.message}; fix: {p.fix}" for p in c.problems]
    if selected:
        blocking += [f"{c.name}: {c.detail}; fix: {c.fix}" for c in checks
                     if c.blocking and not c.ok]
    if not selected and not lab_luns:
        blocking.append("no storage controller can be passed through (see the reasons "
                        "above); fix: resolve one, or give lab LUNs (--lab-lun FILE) on a "
                        "machine without an IOMMU")
    return CvmPlan(host=host, name=cvm_name(host), checks=tuple(checks),
                   controllers=controllers, lab_luns=lab_luns, root_device=root_name,
                   memory_lock=view.can_raise_memlock is not False,
                   memory_lock_limit=checks[2].ok, blocking=tuple(blocking))


# -- the domain ---------------------------------------------------------------------

@dataclass(frozen=True)
class Lun:
    source_dev: str  # /dev/sdX (SCSI passthrough) or /dev/loopN (lab)
    scsi_passthrough: bool


@dataclass(frozen=True)
class CvmDesign:
    host: str
    uuid: str
    vcpus: int
    memory_mib: int
    boot_disk: DiskPlacement
    host_cpus: tuple[int, ...]  # online CPUs of the host
    controllers: tuple[str, ...] = ()
    luns: tuple[Lun, ...] = ()
    seed_iso: DiskPlacement | None = None
    lock_memory: bool = True  # False only where QEMU's memlock limit cannot be raised
    memory_hard_limit: bool = True  # libvirt has the memory cgroup (see host_checks)
    mgmt_vlan: int | None = None
    serial_log: str | None = None


def choose_cpus(host_cpus: tuple[int, ...], vcpus: int) -> list[int]:
    """One host CPU per vCPU, from the top: CPU 0 takes most of the host's interrupts."""
    if vcpus < 1:
        raise InvalidSpec("vcpus", vcpus, "1 or more")
    if vcpus > len(host_cpus):
        raise InvalidSpec("vcpus", vcpus,
                          f"at most {len(host_cpus)}: each CVM vCPU is pinned to a host CPU "
                          f"of its own and the host has {len(host_cpus)}")
    return sorted(host_cpus)[-vcpus:]


def seed_files(host: str) -> dict[str, bytes]:
    """cloud-init NoCloud seed: 192.168.5.2/24 on the virbr0 NIC, DHCP on br0."""
    name = cvm_name(host)
    meta = f"instance-id: {name}\nlocal-hostname: {name}\n"
    network = (
        "version: 2\n"
        "ethernets:\n"
        "  internal:\n"
        f"    match: {{macaddress: \"{cvm_mac(host, VIRBR0)}\"}}\n"
        f"    addresses: [{CVM_ADDRESS}]\n"
        "  management:\n"
        f"    match: {{macaddress: \"{cvm_mac(host, MGMT_BRIDGE)}\"}}\n"
        "    dhcp4: true\n")
    return {"meta-data": meta.encode(), "user-data": b"#cloud-config\n",
            "network-config": network.encode()}


def design_cvm(d: CvmDesign, policy: HostPolicy) -> Domain:
    """The CVM's domain: pinned vCPUs, locked memory, the controllers as managed VFIO
    hostdevs, LUNs on virtio-scsi, NIC 1 on virbr0 and NIC 2 on br0, restart on crash,
    and the labels that keep migration, ADS and HA from moving it."""
    pins = choose_cpus(d.host_cpus, d.vcpus)
    disks = [DiskSpec(name="boot", path=d.boot_disk.path)]
    placements = {"boot": d.boot_disk}
    if d.seed_iso is not None:
        disks.append(DiskSpec(name="seed", path=d.seed_iso.path, cdrom=True))
        placements["seed"] = d.seed_iso
    spec = build(
        VmSpec, name=cvm_name(d.host), uuid=d.uuid, vcpus=d.vcpus, memory_mib=d.memory_mib,
        disks=disks, serial_log=d.serial_log,
        # The lab's guest image reads its address from fw_cfg; real CVM images from
        # the cloud-init seed. Both say the same.
        fw_cfg={"opt/ahvlite/ip": CVM_ADDRESS, "opt/ahvlite/hostname": cvm_name(d.host)},
        labels={ROLE_LABEL: CVM_ROLE, PINNED_LABEL: "true", CVM_HOST_LABEL: d.host})
    dom = designer.design(spec, Design(host=policy, disks=placements))
    dom.on_crash = "restart"
    devs = dom.devices
    assert devs is not None
    # virbr0 first: the guest names it eth0, the NIC the seed and fw_cfg address.
    devs.interfaces.append(designer.interface_for(
        BridgeNic(bridge=VIRBR0, mac=cvm_mac(d.host, VIRBR0))))
    devs.interfaces.append(designer.interface_for(OvsAccessNic(
        vm_uuid=d.uuid, mac=cvm_mac(d.host, MGMT_BRIDGE), bridge=MGMT_BRIDGE,
        vlan=d.mgmt_vlan)))
    used = {x.target_dev or "" for x in devs.disks}
    for i, lun in enumerate(d.luns):
        dev = designer.next_target_dev(used, "scsi")
        used.add(dev)
        devs.disks.append(designer.block_disk(lun.source_dev, dev, serial=f"lun{i}",
                                              scsi_passthrough=lun.scsi_passthrough))
    for address in d.controllers:
        devs.hostdevs.append(designer.pci_hostdev(address))
    # Locked, passed-through memory cannot be ballooned: no balloon at all.
    for balloon in list(devs.memballoons):
        devs.memballoons.remove(balloon)
    none = MemBalloon()
    none.model = "none"
    devs.memballoons.append(none)
    designer.pin_vcpus(dom, pins)
    if d.lock_memory:
        designer.lock_memory(dom, d.memory_mib + LOCK_OVERHEAD_MIB if d.memory_hard_limit
                             else None)
    return dom
