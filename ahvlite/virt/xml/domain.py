"""The ``<domain>`` document and its top-level parts."""

from __future__ import annotations

from lxml import etree

from ahvlite.virt.xml.base import (
    Child,
    Children,
    FlagProp,
    Int,
    MemoryProp,
    Str,
    XmlObject,
    YesNo,
)
from ahvlite.virt.xml.devices import Devices
from ahvlite.virt.xml.hostdev import CpuTune, MemoryBacking, MemTune

# Our own metadata namespace: what ahvlite knows about a VM beyond libvirt's view.
AHV_NS = "https://ahvlite.io/xmlns/vm/1"


class Os(XmlObject):
    TAG = "os"
    type = Str("type")
    arch = Str("type", attr="arch")
    machine = Str("type", attr="machine")
    firmware = Str(attr="firmware")
    loader = Str("loader")
    loader_readonly = YesNo("loader", attr="readonly")
    loader_secure = YesNo("loader", attr="secure")
    loader_type = Str("loader", attr="type")
    nvram = Str("nvram")
    nvram_template = Str("nvram", attr="template")
    kernel = Str("kernel")
    initrd = Str("initrd")
    cmdline = Str("cmdline")


class Features(XmlObject):
    TAG = "features"
    acpi = FlagProp("acpi")
    apic = FlagProp("apic")
    smm = FlagProp("smm")


class Cpu(XmlObject):
    TAG = "cpu"
    mode = Str(attr="mode")
    match = Str(attr="match")
    check = Str(attr="check")
    model = Str("model")
    model_fallback = Str("model", attr="fallback")
    sockets = Int("topology", attr="sockets")
    dies = Int("topology", attr="dies")
    cores = Int("topology", attr="cores")
    threads = Int("topology", attr="threads")


class Timer(XmlObject):
    TAG = "timer"
    name = Str(attr="name")
    tickpolicy = Str(attr="tickpolicy")
    present = YesNo(attr="present")


class Clock(XmlObject):
    TAG = "clock"
    offset = Str(attr="offset")
    timers = Children(Timer)


class FwCfgEntry(XmlObject):
    TAG = "entry"
    name = Str(attr="name")
    value = Str()


class SysInfo(XmlObject):
    TAG = "sysinfo"
    type = Str(attr="type")
    entries = Children(FwCfgEntry)


class VmMeta(XmlObject):
    """``<metadata><ahv:vm>``: names and settings libvirt has no place for."""

    TAG = f"{{{AHV_NS}}}vm"
    overcommit = YesNo(f"{{{AHV_NS}}}overcommit")
    # HA: which incarnation this definition is (bumped by every restart elsewhere), and
    # the VM's spec as the designer rendered it (what a restart renders again).
    epoch = Int(f"{{{AHV_NS}}}epoch")
    spec_json = Str(f"{{{AHV_NS}}}spec")
    nvram_volume = Str(f"{{{AHV_NS}}}nvram")
    # "off" once the VM's owner powered it off through ahvlite: HA leaves it off.
    power = Str(f"{{{AHV_NS}}}power")

    @property
    def labels(self) -> dict[str, str]:
        return {e.get("key", ""): e.get("value", "")
                for e in self.el.findall(f"{{{AHV_NS}}}label")}

    @labels.setter
    def labels(self, values: dict[str, str]) -> None:
        for e in self.el.findall(f"{{{AHV_NS}}}label"):
            self.el.remove(e)
        for k, v in sorted(values.items()):
            etree.SubElement(self.el, f"{{{AHV_NS}}}label", key=k, value=v)

    def _pairs(self, tag: str, attr: str) -> dict[str, str]:
        return {e.get("name", ""): e.get(attr, "")
                for e in self.el.findall(f"{{{AHV_NS}}}{tag}")}

    @property
    def disk_names(self) -> dict[str, str]:
        """Target dev -> disk name."""
        return {v: k for k, v in self._pairs("disk", "dev").items()}

    def set_disk(self, name: str, dev: str, volume: str | None) -> None:
        self._remove("disk", name)
        e = etree.SubElement(self.el, f"{{{AHV_NS}}}disk", name=name, dev=dev)
        if volume:
            e.set("volume", volume)

    @property
    def volumes(self) -> dict[str, str]:
        """Disk name -> volume name in the shared pool (disks ahvlite created)."""
        return {k: v for k, v in self._pairs("disk", "volume").items() if v}

    @property
    def nic_networks(self) -> dict[str, str]:
        """MAC -> network name."""
        return {k: v for k, v in self._pairs("nic", "network").items()}

    def set_nic(self, mac: str, network: str) -> None:
        self._remove("nic", mac)
        etree.SubElement(self.el, f"{{{AHV_NS}}}nic", name=mac, network=network)

    def _remove(self, tag: str, name: str) -> None:
        for e in self.el.findall(f"{{{AHV_NS}}}{tag}[@name='{name}']"):
            self.el.remove(e)

    def remove_nic(self, mac: str) -> None:
        self._remove("nic", mac)


class Domain(XmlObject):
    TAG = "domain"
    type = Str(attr="type")
    name = Str("name")
    uuid = Str("uuid")
    genid = Str("genid")
    title = Str("title")
    description = Str("description")
    memory_mib = MemoryProp("memory")
    current_memory_mib = MemoryProp("currentMemory")
    vcpus = Int("vcpu")
    on_poweroff = Str("on_poweroff")
    on_reboot = Str("on_reboot")
    on_crash = Str("on_crash")
    os = Child(Os)
    features = Child(Features)
    cpu = Child(Cpu)
    clock = Child(Clock)
    sysinfo = Child(SysInfo)
    devices = Child(Devices)
    cputune = Child(CpuTune)
    memtune = Child(MemTune)
    memory_backing = Child(MemoryBacking)
    meta = Child(VmMeta, f"metadata/{{{AHV_NS}}}vm")

    @property
    def has_pci_hostdev(self) -> bool:
        """Whether a PCI device of the host is passed through (such a VM cannot move)."""
        return self.el.find("devices/hostdev[@type='pci']") is not None

    def ensure_os(self) -> Os:
        return self.ensure(Os)

    def ensure_features(self) -> Features:
        return self.ensure(Features)

    def ensure_cpu(self) -> Cpu:
        return self.ensure(Cpu)

    def ensure_devices(self) -> Devices:
        return self.ensure(Devices)

    def ensure_meta(self) -> VmMeta:
        md = self.el.find("metadata")
        if md is None:
            md = etree.SubElement(self.el, "metadata")
        vm = md.find(VmMeta.TAG)
        if vm is None:
            vm = etree.SubElement(md, VmMeta.TAG, nsmap={"ahv": AHV_NS})
        return VmMeta(vm)
