"""The small guests the lab boots outside the VM layer (its KVM probe, drills, tests):
a kernel or one qcow2 disk, at most a few NICs, a serial console. The designer renders
them (``virt.designer.design_small``); user VMs are :class:`~ahvlite.spec.vm.VmSpec`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ahvlite.spec.vif import Nic


@dataclass(frozen=True)
class SimpleGuest:
    name: str
    uuid: str
    domain_type: str  # kvm or qemu (TCG)
    memory_mib: int = 128
    vcpus: int = 1
    disk: Path | None = None  # qcow2, on virtio-scsi; boots with SeaBIOS
    kernel: Path | None = None  # direct kernel boot when set
    initrd: Path | None = None
    cmdline: str = ""
    bridge: str | None = None  # OVS bridge for the first NIC (libvirt names the port)
    mac: str | None = None
    nics: tuple[Nic, ...] = ()  # further NICs
    fw_cfg: dict[str, str] = field(default_factory=dict)  # opt/... entries for the guest
    serial_log: Path | None = None
    machine: str = "q35"
