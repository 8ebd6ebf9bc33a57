"""Specs -> libvirt domain XML: user VMs (:class:`VmSpec`), the lab's small guests
(:class:`SimpleGuest`) and NICs (:mod:`ahvlite.spec.vif`). The one place domain XML is
built; all VM policy lives here; pure (no I/O, no libvirt).

What the caller resolves first (it needs I/O): the target host's domain type and a
CPU model it supports (:class:`HostPolicy`), the volume path of each disk, the
cluster's networks, and where the UEFI variable store goes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from lxml import etree

from ahvlite.errors import InvalidSpec
from ahvlite.spec.network import NetworkSpec
from ahvlite.spec.smallguest import SimpleGuest
from ahvlite.spec.vif import BridgeNic, Nic, OvsAccessNic, OvsTrunkNic
from ahvlite.spec.vm import MIN_MEMORY_MIB, DiskSpec, NicSpec, VmSpec
from ahvlite.virt.xml.devices import (
    Console,
    Controller,
    Devices,
    Disk,
    Graphics,
    Interface,
    MemBalloon,
    Rng,
    Serial,
    Tpm,
    Video,
)
from ahvlite.virt.xml.domain import Clock, Domain, FwCfgEntry, SysInfo, Timer
from ahvlite.virt.xml.hostdev import CpuTune, MemoryBacking, MemTune, PciHostdev, VcpuPin

# Debian's OVMF build (package ovmf): 4 MiB flash images.
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
OVMF_CODE_SECBOOT = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
OVMF_VARS_MS = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"  # Microsoft keys enrolled

# An overcommitted VM starts with this share of its memory; the balloon (with free
# page reporting) gives back what the guest does not use.
OVERCOMMIT_START_PERCENT = 75

_PREFIX = {"scsi": "sd", "sata": "sd", "virtio": "vd", "ide": "hd"}

# q35 hot-plugs PCIe devices (NICs, virtio disks) only into free root ports. libvirt
# puts each defined device on a root port, filling the ones in the XML first, so the
# XML lists one per such device plus these spares for `vm nic add` / `vm disk add`.
SPARE_ROOT_PORTS = 4


@dataclass(frozen=True)
class HostPolicy:
    """What the designer needs to know about the host the VM goes to."""

    domain_type: str = "kvm"  # kvm, or qemu (TCG) where KVM does not work
    cpu_model: str = "qemu64"  # a named model the host supports
    # With a cluster CPU level: its features (require / disable), and those of them
    # this host's domain type cannot provide (see cpu_element).
    cpu_features: tuple[str, ...] = ()
    cpu_disabled: tuple[str, ...] = ()
    cpu_unusable: frozenset[str] = frozenset()
    ovmf_code: str = OVMF_CODE
    ovmf_vars: str = OVMF_VARS
    ovmf_code_secboot: str = OVMF_CODE_SECBOOT
    ovmf_vars_secboot: str = OVMF_VARS_MS


@dataclass(frozen=True)
class DiskPlacement:
    path: str
    volume: str | None = None  # the shared-pool volume ahvlite made (deleted with the VM)
    format: str = "qcow2"


@dataclass(frozen=True)
class IscsiDiskPlacement(DiskPlacement):
    """A disk QEMU reaches over iSCSI (its own initiator) through the host's
    redirector; ``path`` is the volume file the targets serve."""

    iqn: str = ""
    lun: int = 1
    portal_host: str = "127.0.0.1"
    portal_port: int = 3261


@dataclass(frozen=True)
class Design:
    """Inputs resolved by the caller."""

    host: HostPolicy
    disks: dict[str, DiskPlacement]  # disk name -> where it lives
    networks: NetworkSpec = field(default_factory=NetworkSpec)
    nvram_path: str | None = None  # UEFI variable store for this VM
    epoch: int = 0  # the HA incarnation (bumped by every restart on another host)


def rendered_spec(spec: VmSpec, ctx: Design) -> VmSpec:
    """``spec`` as it stands once its disks exist: each disk is the pool volume (or the
    file) it now lives in. What HA keeps, and renders again on another host."""
    disks = []
    for name, d in zip(spec.disk_names(), spec.disks, strict=True):
        place = ctx.disks[name]
        if place.volume is not None:
            disks.append(DiskSpec(name=name, volume=place.volume, bus=d.bus, cdrom=d.cdrom))
        else:
            disks.append(DiskSpec(name=name, path=place.path, bus=d.bus, cdrom=d.cdrom))
    return spec.model_copy(update={"disks": disks})


def target_dev(bus: str, index: int) -> str:
    """sda, sdb ... sdz, sdaa ...: libvirt's naming for the ``index``-th disk on a bus."""
    letters = ""
    n = index
    while True:
        letters = chr(ord("a") + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            break
    return _PREFIX[bus] + letters


def next_target_dev(used: set[str], bus: str) -> str:
    i = 0
    while target_dev(bus, i) in used:
        i += 1
    return target_dev(bus, i)


def machine_for(spec: VmSpec) -> str:
    # q35 has no IDE controller; an IDE disk needs the older i440fx ("pc") machine.
    return "pc" if any(d.bus == "ide" for d in spec.disks) else "q35"


def resolve_nic(nic: NicSpec, vm_uuid: str, networks: NetworkSpec) -> Nic:
    """A NIC spec on a named network (or a bridge, untagged) -> the port it gets."""
    assert nic.mac is not None, "give every NIC a MAC first (VmSpec.with_macs)"
    net = networks.network(nic.network)
    if net is not None:
        if nic.mode == "access":
            return OvsAccessNic(vm_uuid=vm_uuid, mac=nic.mac, bridge=net.bridge,
                                vlan=net.vlan)
        return OvsTrunkNic(vm_uuid=vm_uuid, mac=nic.mac, bridge=net.bridge,
                           native_vlan=net.vlan,
                           trunk_vlans=tuple(v for v in nic.trunk_vlans if v != net.vlan))
    if any(b.name == nic.network for b in networks.bridges):
        if nic.mode == "access":
            return OvsAccessNic(vm_uuid=vm_uuid, mac=nic.mac, bridge=nic.network)
        return OvsTrunkNic(vm_uuid=vm_uuid, mac=nic.mac, bridge=nic.network,
                           trunk_vlans=nic.trunk_vlans)
    nets = ", ".join(n.name for n in networks.networks) or "none defined"
    bridges = ", ".join(b.name for b in networks.bridges) or "none"
    raise InvalidSpec("nic.network", nic.network,
                      f"a network of the cluster ({nets}) or a bridge ({bridges}) for "
                      "untagged access",
                      hint="`ahvlite net` lists and creates networks")


def interface(nic: NicSpec, vm_uuid: str, networks: NetworkSpec) -> Interface:
    return interface_for(resolve_nic(nic, vm_uuid, networks))


def interface_for(nic: Nic) -> Interface:
    """The ``<interface type='bridge'>`` for ``nic`` (checked first)."""
    nic.check()
    E = etree.SubElement
    iface = Interface(etree.Element("interface", type="bridge"))
    el = iface.el
    if nic.mac is not None:
        E(el, "mac", address=nic.mac.lower())
    E(el, "source", bridge=nic.bridge)
    if isinstance(nic, BridgeNic):
        if nic.openvswitch:
            E(el, "virtualport", type="openvswitch")
    else:
        E(E(el, "virtualport", type="openvswitch"), "parameters",
          interfaceid=nic.interface_id)
    if isinstance(nic, OvsAccessNic) and nic.vlan is not None:
        E(E(el, "vlan"), "tag", id=str(nic.vlan))
    elif isinstance(nic, OvsTrunkNic):
        vlan = E(el, "vlan", trunk="yes")
        if nic.native_vlan is not None:
            # libvirt sets vlan_mode=native-untagged, tag=N and lists N in trunks.
            E(vlan, "tag", id=str(nic.native_vlan), nativeMode="untagged")
        for v in sorted(nic.trunk_vlans):
            E(vlan, "tag", id=str(v))
    E(el, "model", type=nic.model)
    return iface


def disk_device(path: str, bus: str, dev: str, *, serial: str, boot_order: int | None,
                fmt: str = "qcow2") -> Disk:
    disk = Disk()
    disk.type = "file"
    disk.device = "disk"
    disk.driver_name = "qemu"
    disk.driver_type = fmt
    # No host page cache: the disk lives on shared storage other hosts may open after
    # a migration, and guest flushes must reach it.
    disk.driver_cache = "none"
    disk.driver_discard = "unmap"
    disk.source_file = path
    disk.target_dev = dev
    disk.target_bus = bus
    disk.serial = serial
    disk.boot_order = boot_order
    return disk


def network_disk_device(place: IscsiDiskPlacement, bus: str, dev: str, *, serial: str,
                        boot_order: int | None) -> Disk:
    """An iSCSI LUN through QEMU's initiator (libiscsi). The portal is the host's
    redirector on 127.0.0.1: the same on every host, so the definition migrates as is
    and each host's QEMU is sent to a target from wherever it runs."""
    disk = Disk()
    disk.type = "network"
    disk.device = "disk"
    disk.driver_name = "qemu"
    disk.driver_type = place.format
    # libiscsi keeps no cache; "none" also tells libvirt the disk is migration-safe.
    disk.driver_cache = "none"
    disk.driver_discard = "unmap"
    disk.source_protocol = "iscsi"
    disk.source_name = f"{place.iqn}/{place.lun}"
    disk.source_host = place.portal_host
    disk.source_port = str(place.portal_port)
    disk.target_dev = dev
    disk.target_bus = bus
    disk.serial = serial
    disk.boot_order = boot_order
    return disk


def design(spec: VmSpec, ctx: Design) -> Domain:
    """The domain for ``spec`` on the host ``ctx`` describes."""
    if any(n.mac is None for n in spec.nics):
        spec = spec.with_macs()
    dom = Domain()
    dom.type = ctx.host.domain_type
    dom.name = spec.name
    dom.uuid = spec.uuid
    dom.genid = spec.genid
    dom.memory_mib = spec.memory_mib
    if spec.overcommit:
        dom.current_memory_mib = max(MIN_MEMORY_MIB,
                                     spec.memory_mib * OVERCOMMIT_START_PERCENT // 100)
    else:
        dom.current_memory_mib = spec.memory_mib
    dom.vcpus = spec.vcpus
    _fw_cfg(dom, spec.fw_cfg)
    _os(dom, spec, ctx)
    features = dom.ensure_features()
    # Without ACPI, q35 guests get no PCI interrupt routing and no fw_cfg device.
    features.acpi = True
    features.apic = True
    features.smm = spec.boot.secure_boot
    cpu_element(dom, ctx.host, spec.vcpus)
    _clock(dom)
    dom.on_poweroff = "destroy"
    dom.on_reboot = "restart"
    # HA restarts VMs whose host fails; a guest that crashes is restarted in place.
    dom.on_crash = "restart"
    _devices(dom, spec, ctx)
    _metadata(dom, spec, ctx)
    return dom


def cpu_element(dom: Domain, host: HostPolicy, vcpus: int) -> None:
    """Set the guest CPU: the host's model, or the cluster level with its features.

    Used for new domains and to redefine existing ones (``cluster cpu apply``); any
    earlier model and features are replaced, so applying twice changes nothing.
    """
    cpu = dom.ensure_cpu()
    cpu.mode = "custom"
    cpu.match = "exact"
    cpu.check = "partial"
    cpu.model = host.cpu_model
    cpu.model_fallback = "forbid"
    cpu.sockets, cpu.dies, cpu.cores, cpu.threads = vcpus, 1, 1, 1
    cpu.remove_child("feature")
    # Under TCG (domain type qemu) the emulator's CPU is what QEMU implements, not the
    # silicon: the qemu domain capabilities list the level's model as usable='no' and
    # their host-model disables what TCG lacks (vme, rdseed, xsavec on the lab). The
    # caller passes those level features as cpu_unusable; requiring them would make
    # libvirt/QEMU refuse to start the guest, so they are disabled instead. The guest
    # sees a little less than the level, which only matters to a TCG lab, never to
    # KVM hosts (the caller leaves cpu_unusable empty for kvm).
    for name in host.cpu_features:
        if name not in host.cpu_unusable:
            etree.SubElement(cpu.el, "feature", policy="require", name=name)
    for name in sorted(set(host.cpu_disabled) | host.cpu_unusable):
        etree.SubElement(cpu.el, "feature", policy="disable", name=name)


def design_xml(spec: VmSpec, ctx: Design) -> str:
    return design(spec, ctx).to_xml()


def _os(dom: Domain, spec: VmSpec, ctx: Design) -> None:
    os_ = dom.ensure_os()
    os_.type = "hvm"
    os_.arch = "x86_64"
    os_.machine = machine_for(spec)
    if spec.boot.firmware == "uefi":
        secure = spec.boot.secure_boot
        os_.loader = ctx.host.ovmf_code_secboot if secure else ctx.host.ovmf_code
        os_.loader_readonly = True
        os_.loader_secure = secure
        os_.loader_type = "pflash"
        if ctx.nvram_path is None:
            raise InvalidSpec("boot.firmware", "uefi", "a place for the NVRAM file "
                              "(the shared pool)")
        os_.nvram_template = ctx.host.ovmf_vars_secboot if secure else ctx.host.ovmf_vars
        os_.nvram = ctx.nvram_path
    if spec.boot.kernel:
        os_.kernel = spec.boot.kernel
        os_.initrd = spec.boot.initrd
        os_.cmdline = spec.boot.cmdline


def _clock(dom: Domain) -> None:
    clock = dom.ensure(Clock)
    clock.offset = "utc"
    for name, policy, present in (("rtc", "catchup", None), ("pit", "delay", None),
                                  ("hpet", None, False)):
        t = Timer()
        t.name = name
        t.tickpolicy = policy
        t.present = present
        clock.timers.append(t)


def _devices(dom: Domain, spec: VmSpec, ctx: Design) -> None:
    devs = dom.ensure_devices()
    scsi = Controller()
    scsi.type, scsi.model, scsi.index = "scsi", "virtio-scsi", 0
    # One request queue per vCPU: each vCPU submits and completes I/O on its own queue.
    scsi.queues = spec.vcpus
    devs.controllers.append(scsi)
    if machine_for(spec) == "q35":
        root = Controller()
        root.type, root.model, root.index = "pci", "pcie-root", 0
        devs.controllers.append(root)
        # virtio-scsi, balloon, rng, then each virtio disk and NIC (no USB: see below).
        on_ports = 3 + sum(d.bus == "virtio" for d in spec.disks) + len(spec.nics)
        for _ in range(on_ports + SPARE_ROOT_PORTS):
            port = Controller()
            port.type, port.model = "pci", "pcie-root-port"
            devs.controllers.append(port)
    used: set[str] = set()
    for i, (name, d) in enumerate(zip(spec.disk_names(), spec.disks, strict=True)):
        if name not in ctx.disks:
            raise InvalidSpec("disks", name, "a disk with a resolved volume path")
        dev = next_target_dev(used, d.bus)
        used.add(dev)
        place = ctx.disks[name]
        boots = i == 0 and not spec.boot.kernel and not d.cdrom
        if isinstance(place, IscsiDiskPlacement) and not d.cdrom:
            devs.disks.append(network_disk_device(place, d.bus, dev, serial=name,
                                                  boot_order=1 if boots else None))
            continue
        disk = disk_device(place.path, d.bus, dev, serial=name,
                           boot_order=1 if boots else None, fmt=place.format)
        if d.cdrom:
            disk.device = "cdrom"
            disk.driver_discard = None
            disk.readonly = True
        devs.disks.append(disk)
    for nic in spec.nics:
        devs.interfaces.append(interface(nic, spec.uuid, ctx.networks))
    # No USB controller: nothing uses it (VNC has PS/2 input), and libvirt would add
    # one on a root port of its own.
    usb = Controller()
    usb.type, usb.model = "usb", "none"
    devs.controllers.append(usb)
    _serial_console(devs, spec.serial_log)
    vnc = Graphics()
    vnc.type, vnc.port, vnc.autoport = "vnc", -1, True
    vnc.listen_address("127.0.0.1")  # reach it through an SSH tunnel, never the network
    devs.graphics.append(vnc)
    video = Video()
    video.model, video.vram_kib, video.heads = "vga", 16384, 1
    devs.videos.append(video)
    if spec.vtpm:
        tpm = Tpm()
        tpm.model, tpm.backend_type, tpm.backend_version = "tpm-crb", "emulator", "2.0"
        devs.tpms.append(tpm)
    rng = Rng()
    rng.model, rng.backend_model, rng.backend = "virtio", "random", "/dev/urandom"
    devs.rngs.append(rng)
    balloon = MemBalloon()
    balloon.model = "virtio"
    if spec.overcommit:
        balloon.autodeflate = True
        balloon.free_page_reporting = True
    balloon.stats_period_s = 10
    devs.memballoons.append(balloon)


def _metadata(dom: Domain, spec: VmSpec, ctx: Design) -> None:
    meta = dom.ensure_meta()
    meta.overcommit = spec.overcommit
    meta.epoch = ctx.epoch
    meta.spec_json = json.dumps(rendered_spec(spec, ctx).model_dump(mode="json"),
                                sort_keys=True, separators=(",", ":"))
    if ctx.nvram_path:
        meta.nvram_volume = PurePosixPath(ctx.nvram_path).name
    if spec.labels:
        meta.labels = dict(spec.labels)
    devs = {d.serial: d.target_dev for d in dom.devices.disks} if dom.devices else {}
    for name in spec.disk_names():
        meta.set_disk(name, devs.get(name) or "", ctx.disks[name].volume)
    for nic in spec.nics:
        assert nic.mac is not None
        meta.set_nic(nic.mac, nic.network)


# -- passthrough VMs (the CVM) --------------------------------------------------------

def block_disk(source_dev: str, dev: str, *, serial: str, scsi_passthrough: bool) -> Disk:
    """A host block device on the virtio-scsi bus.

    ``scsi_passthrough``: ``device='lun'`` (QEMU scsi-block), so the guest's SCSI
    commands reach the disk itself, as a CVM wants for real disks. That needs a device
    that answers SG_IO (sd, not loop devices: QEMU refuses "Is this a SCSI device?"),
    so file-backed lab LUNs are plain ``device='disk'`` over the same bus.
    """
    disk = Disk()
    disk.type = "block"
    disk.device = "lun" if scsi_passthrough else "disk"
    disk.driver_name, disk.driver_type, disk.driver_cache = "qemu", "raw", "none"
    disk.source_dev = source_dev
    disk.target_dev, disk.target_bus = dev, "scsi"
    if scsi_passthrough:
        disk.sgio = "filtered"  # only commands the kernel deems safe reach the disk
    else:
        disk.serial = serial  # a LUN reports the disk's own serial
    return disk


def pin_vcpus(dom: Domain, host_cpus: list[int]) -> None:
    """vCPU i runs only on ``host_cpus[i]``; QEMU's own threads on the same set."""
    tune = dom.ensure(CpuTune)
    tune.remove_child("vcpupin")
    for vcpu, cpu in enumerate(host_cpus):
        pin = VcpuPin()
        pin.vcpu, pin.cpuset = vcpu, str(cpu)
        tune.vcpupins.append(pin)
    tune.emulatorpin = ",".join(str(c) for c in sorted(host_cpus))


def lock_memory(dom: Domain, hard_limit_mib: int | None) -> None:
    """Keep the guest's memory resident (``<memoryBacking><locked/>``).

    libvirt then lifts QEMU's locked-memory limit to ``hard_limit`` or, without one,
    removes it altogether, which lets a runaway QEMU pin all host memory; so a hard
    limit is set wherever libvirt has the memory cgroup to enforce it.
    """
    dom.ensure(MemoryBacking).locked = True
    if hard_limit_mib is not None:
        dom.ensure(MemTune).hard_limit_mib = hard_limit_mib


def pci_hostdev(address: str) -> PciHostdev:
    return PciHostdev.for_address(address, managed=True)


# -- the lab's small guests -------------------------------------------------------------

def _serial_console(devs: Devices, log_file: str | None) -> None:
    """The serial port on a pty, its output also kept in ``log_file`` (truncated at
    each start), and the console on it."""
    serial = Serial()
    serial.type = "pty"
    serial.log_file = log_file
    serial.log_append = "off" if log_file else None
    serial.target_port = 0
    devs.serials.append(serial)
    console = Console()
    console.type, console.target_type, console.target_port = "pty", "serial", 0
    devs.consoles.append(console)


def _fw_cfg(dom: Domain, entries: dict[str, str]) -> None:
    """QEMU fw_cfg entries (the guest reads them under /sys/firmware/qemu_fw_cfg)."""
    if not entries:
        return
    sysinfo = dom.ensure(SysInfo)
    sysinfo.type = "fwcfg"
    for key, value in sorted(entries.items()):
        entry = FwCfgEntry()
        entry.name = key
        entry.value = value
        sysinfo.entries.append(entry)


def design_small(g: SimpleGuest) -> Domain:
    """The domain for one of the lab's small guests: no policy beyond booting it."""
    dom = Domain()
    dom.type = g.domain_type
    dom.name = g.name
    dom.uuid = g.uuid
    dom.memory_mib = g.memory_mib
    dom.vcpus = g.vcpus
    _fw_cfg(dom, g.fw_cfg)
    os_ = dom.ensure_os()
    os_.type = "hvm"
    os_.arch = "x86_64"
    os_.machine = g.machine
    if g.kernel:
        os_.kernel = str(g.kernel)
        if g.initrd:
            os_.initrd = str(g.initrd)
        etree.SubElement(os_.el, "cmdline").text = g.cmdline  # kept even when empty
    else:
        etree.SubElement(os_.el, "boot", dev="hd")
    # Without <acpi/> libvirt starts QEMU with ACPI off: no fw_cfg device for the
    # guest to find, and no PCI interrupt routing on q35.
    features = dom.ensure_features()
    features.acpi = True
    features.apic = True
    dom.on_poweroff = "destroy"
    dom.on_reboot = "restart"
    dom.on_crash = "destroy"
    devs = dom.ensure_devices()
    scsi = Controller()
    scsi.type, scsi.model, scsi.index = "scsi", "virtio-scsi", 0
    devs.controllers.append(scsi)
    if g.disk:
        disk = Disk()
        disk.type, disk.device = "file", "disk"
        disk.driver_name, disk.driver_type, disk.driver_cache = "qemu", "qcow2", "none"
        disk.source_file = str(g.disk)
        disk.target_dev, disk.target_bus = "sda", "scsi"
        devs.disks.append(disk)
    nics: list[Nic] = [BridgeNic(bridge=g.bridge, mac=g.mac, openvswitch=True)] \
        if g.bridge else []
    for nic in [*nics, *g.nics]:
        devs.interfaces.append(interface_for(nic))
    _serial_console(devs, str(g.serial_log) if g.serial_log else None)
    balloon = MemBalloon()
    balloon.model = "none"
    devs.memballoons.append(balloon)
    return dom


def simple_domain_xml(g: SimpleGuest) -> str:
    return design_small(g).to_xml()
