"""PCI node devices: storage controllers, their IOMMU groups and the disks behind them.

Two sources, both parsed by pure functions so they are tested on recorded data:

* libvirt's node-device API (``virConnectListAllDevices`` with the PCI capability):
  address, class, vendor/product names, driver, IOMMU group and its members;
* the host's sysfs and /proc for what libvirt does not say: which block devices sit
  behind which PCI function, which one holds ``/``, the kernel command line, whether
  the vfio modules exist for the running kernel, and libvirt's cgroup setting.
  :data:`HOST_SCRIPT` prints all of that in one POSIX shell run, over SSH on a real
  host or locally with ``AHVLITE_SYSROOT`` pointing at a recorded tree.

It also reattaches a function to its host driver (``virNodeDeviceReAttach``) for the
case where libvirt's managed hostdev did not (a CVM undefined while running elsewhere).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
from lxml import etree

from ahvlite.errors import OperationFailed
from ahvlite.virt.conn import libvirt_errors, or_none

# PCI base class 0x01: mass storage. Subclasses by name (the programming interface,
# the last byte, tells AHCI from legacy IDE-mode SATA and NVMe from other NVM).
MASS_STORAGE = 0x01
STORAGE_KINDS = {0x00: "SCSI", 0x01: "IDE", 0x04: "RAID", 0x05: "ATA", 0x06: "SATA",
                 0x07: "SAS", 0x08: "NVMe", 0x80: "other storage"}
# PCI-to-PCI bridges (0x0604, semi-transparent 0x0609) sit in IOMMU groups next to the
# devices below them; VFIO accepts them in a group it takes over (they stay with pcieport).
BRIDGE_CLASSES = (0x0604, 0x0609)
CLASS_NAMES = {0x00: "unclassified", 0x01: "storage", 0x02: "network", 0x03: "display",
               0x04: "multimedia", 0x05: "memory", 0x06: "bridge", 0x07: "communication",
               0x08: "system peripheral", 0x09: "input", 0x0C: "serial bus",
               0x0D: "wireless"}

CAP_SYS_RESOURCE = 24  # linux/capability.h: raise resource limits (RLIMIT_MEMLOCK)

_ADDR = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


def normalize_address(text: str) -> str | None:
    """``0000:3c:00.0`` (domain optional, any case) or None when it is no PCI address."""
    t = text.strip().lower()
    if re.fullmatch(r"[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", t):
        t = "0000:" + t
    return t if _ADDR.fullmatch(t) else None


def class_name(class_code: int) -> str:
    base, sub = class_code >> 16, (class_code >> 8) & 0xFF
    if base == MASS_STORAGE:
        return f"{STORAGE_KINDS.get(sub, 'storage')} controller"
    if (class_code >> 8) in BRIDGE_CLASSES:
        return "PCI bridge"
    return CLASS_NAMES.get(base, f"class {class_code:#08x}")


def is_storage(class_code: int) -> bool:
    return class_code >> 16 == MASS_STORAGE


def is_bridge(class_code: int) -> bool:
    return (class_code >> 8) in BRIDGE_CLASSES


@dataclass(frozen=True)
class PciFunction:
    """One PCI function as libvirt's node-device API reports it."""

    name: str  # node device name, pci_0000_3c_00_0
    address: str  # 0000:3c:00.0
    class_code: int
    vendor: str | None = None
    product: str | None = None
    driver: str | None = None
    iommu_group: int | None = None
    group_members: tuple[str, ...] = ()  # addresses, itself included

    @property
    def kind(self) -> str:
        return class_name(self.class_code)

    @property
    def storage(self) -> bool:
        return is_storage(self.class_code)

    @property
    def bridge(self) -> bool:
        return is_bridge(self.class_code)

    def describe(self) -> str:
        what = " ".join(x for x in (self.vendor, self.product) if x) or self.kind
        return f"{self.address} ({what}, {self.kind}, driver {self.driver or 'none'})"


def _hex_attr(el: etree._Element, name: str) -> int:
    return int(el.get(name, "0"), 0)


def parse_pci_nodedev(xml: str) -> PciFunction:
    """libvirt's node-device XML of a PCI function -> :class:`PciFunction` (pure)."""
    root = etree.fromstring(xml.encode())
    cap = root.find("capability[@type='pci']")
    if cap is None:
        raise ValueError(f"{root.findtext('name')} is not a PCI node device")

    def num(tag: str) -> int:
        return int(cap.findtext(tag) or "0", 0)

    address = (f"{num('domain'):04x}:{num('bus'):02x}:{num('slot'):02x}."
               f"{num('function'):x}")
    group = cap.find("iommuGroup")
    members: tuple[str, ...] = ()
    if group is not None:
        members = tuple(sorted(
            f"{_hex_attr(a, 'domain'):04x}:{_hex_attr(a, 'bus'):02x}:"
            f"{_hex_attr(a, 'slot'):02x}.{_hex_attr(a, 'function'):x}"
            for a in group.findall("address")))
    return PciFunction(
        name=root.findtext("name") or "",
        address=address,
        class_code=int(cap.findtext("class") or "0", 0),
        vendor=(cap.findtext("vendor") or None),
        product=(cap.findtext("product") or None),
        driver=root.findtext("driver/name"),
        iommu_group=int(group.get("number", "0")) if group is not None else None,
        group_members=members,
    )


def list_pci_functions(conn: libvirt.virConnect) -> list[PciFunction]:
    """Every PCI function of the host behind ``conn`` (empty where the driver has none)."""
    with libvirt_errors("list PCI node devices"):
        try:
            devices = conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                return []  # drivers without node devices (test://) have no PCI either
            raise
        return sorted((parse_pci_nodedev(d.XMLDesc(0)) for d in devices),
                      key=lambda f: f.address)


def node_device_name(address: str) -> str:
    return "pci_" + re.sub(r"[:.]", "_", address)


def reattach(conn: libvirt.virConnect, address: str) -> bool:
    """Give ``address`` back to its host driver when it is still on vfio-pci.

    libvirt's managed hostdevs are reattached when the domain stops; this covers the
    rest (a QEMU that died while libvirtd was down). True when it reattached."""
    name = node_device_name(address)
    dev = or_none(lambda: conn.nodeDeviceLookupByName(name),
                  missing=libvirt.VIR_ERR_NO_NODE_DEVICE, context=f"look up {address}")
    if dev is None:
        return False
    with libvirt_errors(f"reattach {address} to its host driver"):
        if parse_pci_nodedev(dev.XMLDesc(0)).driver != "vfio-pci":
            return False
        dev.reAttach()
        return True


# -- sysfs and /proc -------------------------------------------------------------------

# One run prints every section; paths are printed without the sysroot prefix so a
# recorded tree reads like the real thing. ``readlink -f`` resolves sysfs's relative
# links (class/block/sda -> ../../devices/pci0000:00/...) inside the tree as well.
HOST_SCRIPT = r"""
R="${AHVLITE_SYSROOT:-}"
unroot() { sed "s|^$R||"; }
echo '#cmdline'; cat "$R/proc/cmdline" 2>/dev/null
echo '#release'; REL=$(cat "$R/proc/sys/kernel/osrelease" 2>/dev/null); echo "$REL"
echo '#iommu'
for d in "$R"/sys/kernel/iommu_groups/*/devices/*; do
  [ -e "$d" ] || continue; g=${d%/devices/*}; echo "${g##*/} ${d##*/}"
done
echo '#pci'
for d in "$R"/sys/bus/pci/devices/*; do
  [ -e "$d" ] || continue
  drv=$(readlink "$d/driver" 2>/dev/null); drv=${drv##*/}
  echo "${d##*/} $(cat "$d/class" 2>/dev/null || echo 0) ${drv:--}"
done
echo '#block'
for b in "$R"/sys/class/block/*; do
  [ -e "$b" ] || continue
  part=0; [ -e "$b/partition" ] && part=1
  slaves=$(ls "$b/slaves" 2>/dev/null | tr '\n' ,)
  dev=$(cat "$b/dev" 2>/dev/null || echo -); size=$(cat "$b/size" 2>/dev/null || echo 0)
  echo "${b##*/} $dev $part $size ${slaves:--} $(readlink -f "$b" | unroot)"
done
echo '#root'
# mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE ...
awk '$5 == "/" { dev = $3; fs = "-"; src = "-"
  for (i = 7; i < NF; i++) if ($i == "-") { fs = $(i + 1); src = $(i + 2); break } }
  END { if (dev != "") print dev, fs, src }' "$R/proc/self/mountinfo" 2>/dev/null
echo '#modules'
for f in modules.dep modules.builtin; do
  [ -r "$R/lib/modules/$REL/$f" ] || continue
  sed -n 's|^\([^:]*/\)\{0,1\}\(vfio[^/:]*\)\.ko.*|\2|p' "$R/lib/modules/$REL/$f"
done
for m in "$R"/sys/module/vfio*; do [ -e "$m" ] && echo "${m##*/}"; done
echo '#capbnd'
awk '/^CapBnd:/ { print $2 }' "$R/proc/self/status" 2>/dev/null
echo '#cgroup_controllers'
grep -E '^[[:space:]]*cgroup_controllers' "$R/etc/libvirt/qemu.conf" 2>/dev/null
echo '#end'
"""


@dataclass(frozen=True)
class BlockDevice:
    name: str  # sda, sda2, nvme0n1, dm-0
    dev: str  # major:minor
    partition: bool
    size_bytes: int
    slaves: tuple[str, ...]  # devices below (dm, md)
    sys_path: str  # resolved path under /sys/devices

    @property
    def pci_chain(self) -> tuple[str, ...]:
        """PCI functions on the way from the root complex to this device."""
        return tuple(_ADDR.findall(self.sys_path))


@dataclass(frozen=True)
class HostSysView:
    """What sysfs and /proc say about passthrough on one host."""

    cmdline: str = ""
    kernel_release: str = ""
    iommu_groups: dict[str, int] = field(default_factory=dict)  # address -> group
    pci: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # class, driver
    block: tuple[BlockDevice, ...] = ()
    root_dev: str | None = None  # major:minor of the filesystem mounted on /
    # Its type and source as mountinfo gives them (btrfs /dev/sda2, zfs rpool/ROOT/x,
    # overlay overlay, nfs4 srv:/export): what an unknown root is reported as.
    root_fstype: str | None = None
    root_source: str | None = None
    vfio_modules: frozenset[str] = frozenset()  # names with '_', available or loaded
    # libvirt qemu.conf cgroup_controllers: None when unset (libvirt uses all).
    cgroup_controllers: tuple[str, ...] | None = None
    # Whether root processes here (libvirtd, started like the shell) may raise the
    # locked-memory limit: CAP_SYS_RESOURCE in the bounding set. None: not known.
    can_raise_memlock: bool | None = None

    def disks_behind(self, address: str) -> list[BlockDevice]:
        """Whole disks (no partitions) whose sysfs path runs through ``address``."""
        return [b for b in self.block if not b.partition and address in b.pci_chain]

    def root_chain(self) -> tuple[str | None, tuple[str, ...]]:
        """(block device holding ``/``, the PCI functions it sits behind)."""
        by_dev = {b.dev: b for b in self.block}
        by_name = {b.name: b for b in self.block}
        # Filesystems on no single block device (btrfs, ZFS, overlay, NFS, tmpfs) have
        # an anonymous 0:N device number that matches nothing here: unknown, not "none".
        root = by_dev.get(self.root_dev or "")
        if root is None:
            return None, ()
        seen: set[str] = set()
        chain: list[str] = []
        todo = [root]
        while todo:  # follow dm/md down to the disks they are made of
            b = todo.pop()
            if b.name in seen:
                continue
            seen.add(b.name)
            chain += [a for a in b.pci_chain if a not in chain]
            todo += [by_name[s] for s in b.slaves if s in by_name]
        return root.name, tuple(chain)


def parse_host_script(text: str) -> HostSysView:
    """The output of :data:`HOST_SCRIPT` -> :class:`HostSysView` (pure)."""
    sections: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("#") and " " not in line:
            current = line[1:]
            sections[current] = []
        elif current and line.strip():
            sections[current].append(line.strip())
    if "end" not in sections:
        raise OperationFailed("the host's sysfs report is cut short (no #end line)")
    groups: dict[str, int] = {}
    for line in sections.get("iommu", []):
        g, _, addr = line.partition(" ")
        if g.isdigit() and normalize_address(addr):
            groups[addr.lower()] = int(g)
    pci: dict[str, tuple[int, str | None]] = {}
    for line in sections.get("pci", []):
        parts = line.split()
        if len(parts) == 3 and normalize_address(parts[0]):
            pci[parts[0].lower()] = (int(parts[1], 0), None if parts[2] == "-" else parts[2])
    block = []
    for line in sections.get("block", []):
        parts = line.split(maxsplit=5)
        if len(parts) < 6:
            continue
        name, dev, part, size, slaves, path = parts
        block.append(BlockDevice(
            name=name, dev=dev, partition=part == "1",
            size_bytes=int(size) * 512 if size.isdigit() else 0,
            slaves=tuple(s for s in slaves.split(",") if s and s != "-"), sys_path=path))
    cgroups: tuple[str, ...] | None = None
    for line in sections.get("cgroup_controllers", []):
        _, _, value = line.partition("=")
        cgroups = tuple(re.findall(r'"([^"]+)"', value))
    capbnd = sections.get("capbnd") or []
    memlock = bool(int(capbnd[0], 16) >> CAP_SYS_RESOURCE & 1) if capbnd else None
    roots = sections.get("root") or []
    root_fields = roots[-1].split(maxsplit=2) if roots else []
    root_fields += ["-"] * (3 - len(root_fields))
    root, root_fs, root_src = (None if x == "-" else x for x in root_fields[:3])
    return HostSysView(
        cmdline=" ".join(sections.get("cmdline", [])),
        kernel_release=" ".join(sections.get("release", [])),
        iommu_groups=groups, pci=pci, block=tuple(block), root_dev=root,
        root_fstype=root_fs, root_source=root_src,
        vfio_modules=frozenset(m.replace("-", "_") for m in sections.get("modules", [])),
        cgroup_controllers=cgroups, can_raise_memlock=memlock)


def read_sysroot(root: Path = Path("/")) -> HostSysView:
    """Run :data:`HOST_SCRIPT` on this machine, against ``root`` (a recorded tree in
    tests, ``/`` for the local host)."""
    sysroot = "" if str(root) == "/" else str(Path(root).resolve())
    result = subprocess.run(["sh", "-c", HOST_SCRIPT], capture_output=True, text=True,
                            env={**os.environ, "AHVLITE_SYSROOT": sysroot}, timeout=60,
                            check=False)
    if result.returncode != 0:
        raise OperationFailed(f"reading sysfs under {root} failed: {result.stderr.strip()}")
    return parse_host_script(result.stdout)
