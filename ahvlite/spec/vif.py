"""A VM NIC as data (the os-vif way): one small object per kind of port the host
gives a NIC. The VM layer resolves a :class:`~ahvlite.spec.vm.NicSpec` on a network
into one of these; ``virt`` renders it as libvirt's ``<interface>``.

On OVS, libvirt plugs the tap into the bridge itself (``virtualport
type='openvswitch'``) and writes the port's VLAN settings and the Interface
``external_ids`` OVS integrations expect: ``vm-id`` (the domain UUID),
``attached-mac``, ``iface-id`` (our interface id) and ``iface-status``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from ahvlite.errors import InvalidSpec

# Stable interface ids: the same VM and MAC always get the same iface-id, so a VM
# redefined (or migrated) keeps its identity on the OVS port.
IFACE_NAMESPACE = uuid.UUID("2a3c9f5e-4f0b-4a8e-9b59-0e4f3c2d7a61")


def _check_vlan(name: str, value: int | None) -> None:
    if value is not None and not 1 <= value <= 4094:
        raise InvalidSpec(f"nic.{name}", value, "a VLAN id from 1 to 4094")


def _check_uuid(value: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise InvalidSpec("nic.vm_uuid", value, "a UUID") from None


@dataclass(frozen=True)
class OvsAccessNic:
    """An OVS port carrying one VLAN untagged (``vlan`` None: untagged, VLAN 0)."""

    vm_uuid: str
    mac: str
    bridge: str = "br0"
    vlan: int | None = None
    model: str = "virtio"

    @property
    def interface_id(self) -> str:
        return interface_id(self.vm_uuid, self.mac)

    def check(self) -> None:
        """Raise InvalidSpec for settings no port can have."""
        _check_vlan("vlan", self.vlan)
        _check_uuid(self.vm_uuid)


@dataclass(frozen=True)
class OvsTrunkNic:
    """An OVS port carrying ``trunk_vlans`` tagged and ``native_vlan`` untagged."""

    vm_uuid: str
    mac: str
    bridge: str = "br0"
    trunk_vlans: tuple[int, ...] = field(default_factory=tuple)
    native_vlan: int | None = None
    model: str = "virtio"

    @property
    def interface_id(self) -> str:
        return interface_id(self.vm_uuid, self.mac)

    def check(self) -> None:
        """Raise InvalidSpec for settings no port can have."""
        _check_vlan("native_vlan", self.native_vlan)
        for v in self.trunk_vlans:
            if not 1 <= v <= 4094:
                raise InvalidSpec("nic.trunk_vlans", v, "VLAN ids from 1 to 4094")
        if not self.trunk_vlans:
            raise InvalidSpec("nic.trunk_vlans", [], "at least one VLAN in trunk mode")
        if self.native_vlan is not None and self.native_vlan in self.trunk_vlans:
            raise InvalidSpec("nic.native_vlan", self.native_vlan,
                              "a VLAN not also listed in trunk_vlans")
        _check_uuid(self.vm_uuid)


@dataclass(frozen=True)
class BridgeNic:
    """A tap on a bridge, with no VLAN and no identity of ours: a Linux bridge (virbr0:
    host <-> CVM only), or with ``openvswitch`` an OVS bridge where libvirt picks the
    port's interface id (the lab's small guests). ``mac`` None: libvirt picks one."""

    bridge: str
    mac: str | None = None
    openvswitch: bool = False
    model: str = "virtio"

    def check(self) -> None:
        """Nothing to check: any bridge name libvirt accepts will do."""


Nic = OvsAccessNic | OvsTrunkNic | BridgeNic


def interface_id(vm_uuid: str, mac: str) -> str:
    return str(uuid.uuid5(IFACE_NAMESPACE, f"{vm_uuid}/{mac.lower()}"))
