"""Rebuild ``nx-host/`` (the recorded sysfs tree) from the table below.

Run from anywhere: ``python tests/data/cvm/build_sysroot.py``. The node-device XML in
``nx-host-nodedev/`` is written by hand (see README.md) and kept in step with DEVICES.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE / "nx-host"
RELEASE = "6.1.0-18-amd64"

# address, sysfs parent path below /sys/devices, class, driver, IOMMU group
DEVICES = [
    ("0000:00:00.0", "pci0000:00", "0x060000", "skl_uncore", 0),
    ("0000:00:17.0", "pci0000:00", "0x010601", "ahci", 5),
    ("0000:00:1c.0", "pci0000:00", "0x060400", "pcieport", 14),
    ("0000:00:1c.4", "pci0000:00", "0x060400", "pcieport", 14),
    ("0000:00:1d.0", "pci0000:00", "0x060400", "pcieport", 12),
    ("0000:3c:00.0", "pci0000:00/0000:00:1d.0", "0x010802", "nvme", 13),
    ("0000:3d:00.0", "pci0000:00/0000:00:1c.0", "0x010802", "nvme", 14),
    ("0000:3e:00.0", "pci0000:00/0000:00:1c.4", "0x020000", "igb", 14),
]

# name, dev, sectors, path below /sys/devices, partition
BLOCK = [
    ("sda", "8:0", 937703088,
     "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda", False),
    ("sda1", "8:1", 1048576,
     "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda1", True),
    ("sda2", "8:2", 936652800,
     "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda2", True),
    ("nvme0n1", "259:0", 1875385008,
     "pci0000:00/0000:00:1d.0/0000:3c:00.0/nvme/nvme0/nvme0n1", False),
    ("nvme1n1", "259:1", 1875385008,
     "pci0000:00/0000:00:1c.0/0000:3d:00.0/nvme/nvme1/nvme1n1", False),
    ("loop0", "7:0", 0, "virtual/block/loop0", False),
]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(os.path.relpath(target, path.parent))


def main() -> None:
    if ROOT.exists():
        shutil.rmtree(ROOT)
    sys_ = ROOT / "sys"
    devices = sys_ / "devices"
    for addr, parent, cls, driver, group in DEVICES:
        d = devices / parent / addr
        write(d / "class", cls + "\n")
        # Dangling, as git keeps no empty directories: only the link's name is read.
        link(d / "driver", sys_ / "bus/pci/drivers" / driver)
        link(sys_ / "bus/pci/devices" / addr, d)
        link(sys_ / "kernel/iommu_groups" / str(group) / "devices" / addr, d)
    for name, dev, sectors, path, partition in BLOCK:
        d = devices / path
        write(d / "dev", dev + "\n")
        write(d / "size", f"{sectors}\n")
        if partition:
            write(d / "partition", name[-1] + "\n")
        link(sys_ / "class/block" / name, d)
    write(ROOT / "proc/cmdline",
          f"BOOT_IMAGE=/vmlinuz-{RELEASE} root=UUID=4f1c2a9e-2b7d-4c55-9a51-0d6f3e8b1c27 "
          "ro quiet intel_iommu=on iommu=pt\n")
    write(ROOT / "proc/sys/kernel/osrelease", RELEASE + "\n")
    write(ROOT / "proc/self/mountinfo",
          "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro\n"
          "23 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
          "24 22 8:1 / /boot/efi rw,relatime shared:30 - vfat /dev/sda1 rw\n")
    mods = ROOT / "lib/modules" / RELEASE
    write(mods / "modules.dep",
          "kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko "
          "kernel/drivers/vfio/vfio.ko\n"
          "kernel/drivers/vfio/pci/vfio-pci-core.ko: kernel/drivers/vfio/vfio.ko\n"
          "kernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko\n"
          "kernel/drivers/vfio/vfio.ko:\n"
          "kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko\n")
    write(mods / "modules.builtin", "kernel/drivers/ata/libahci.ko\n")
    write(ROOT / "etc/libvirt/qemu.conf",
          '#cgroup_controllers = [ "cpu", "devices", "memory", "blkio", "cpuset", '
          '"cpuacct" ]\nuser = "libvirt-qemu"\n')


if __name__ == "__main__":
    main()
