"""The VM NIC contract: a NIC spec -> libvirt ``<interface>`` on an OVS bridge.

libvirt plugs the tap into the bridge itself (``virtualport type='openvswitch'``) and
writes the port's VLAN settings and the Interface ``external_ids`` OVS integrations
expect: ``vm-id`` (the domain UUID), ``attached-mac``, ``iface-id`` (our
interfaceid) and ``iface-status``. The VM layer embeds this element as it is.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

from lxml import etree

from ahvlite.errors import InvalidSpec

# Stable interface ids: the same VM and MAC always get the same iface-id, so a VM
# redefined (or migrated) keeps its identity on the OVS port.
IFACE_NAMESPACE = uuid.UUID("2a3c9f5e-4f0b-4a8e-9b59-0e4f3c2d7a61")


@dataclass(frozen=True)
class VmNic:
    vm_uuid: str
    mac: str
    bridge: str = "br0"
    mode: Literal["access", "trunk"] = "access"
    vlan: int | None = None  # access: the VLAN (None: untagged, VLAN 0)
    native_vlan: int | None = None  # trunk: carried untagged
    trunk_vlans: tuple[int, ...] = field(default_factory=tuple)  # trunk: tagged
    model: str = "virtio"

    @property
    def interface_id(self) -> str:
        return str(uuid.uuid5(IFACE_NAMESPACE, f"{self.vm_uuid}/{self.mac.lower()}"))


def check_nic(nic: VmNic) -> None:
    """Raise InvalidSpec for VLAN settings that do not fit the mode."""
    for name, value in (("vlan", nic.vlan), ("native_vlan", nic.native_vlan)):
        if value is not None and not 1 <= value <= 4094:
            raise InvalidSpec(f"nic.{name}", value, "a VLAN id from 1 to 4094")
    for v in nic.trunk_vlans:
        if not 1 <= v <= 4094:
            raise InvalidSpec("nic.trunk_vlans", v, "VLAN ids from 1 to 4094")
    if nic.mode == "access" and (nic.trunk_vlans or nic.native_vlan is not None):
        raise InvalidSpec("nic.mode", nic.mode,
                          "trunk when trunk_vlans or native_vlan are set")
    if nic.mode == "trunk":
        if nic.vlan is not None:
            raise InvalidSpec("nic.vlan", nic.vlan,
                              "unset in trunk mode (use native_vlan and trunk_vlans)")
        if not nic.trunk_vlans:
            raise InvalidSpec("nic.trunk_vlans", [], "at least one VLAN in trunk mode")
        if nic.native_vlan is not None and nic.native_vlan in nic.trunk_vlans:
            raise InvalidSpec("nic.native_vlan", nic.native_vlan,
                              "a VLAN not also listed in trunk_vlans")
    try:
        uuid.UUID(nic.vm_uuid)
    except ValueError:
        raise InvalidSpec("nic.vm_uuid", nic.vm_uuid, "a UUID") from None


def interface_element(nic: VmNic) -> etree._Element:
    """The ``<interface type='bridge'>`` element for ``nic`` (validated first)."""
    check_nic(nic)
    E = etree.SubElement
    iface = etree.Element("interface", type="bridge")
    E(iface, "mac", address=nic.mac.lower())
    E(iface, "source", bridge=nic.bridge)
    port = E(iface, "virtualport", type="openvswitch")
    E(port, "parameters", interfaceid=nic.interface_id)
    if nic.mode == "access" and nic.vlan is not None:
        E(E(iface, "vlan"), "tag", id=str(nic.vlan))
    elif nic.mode == "trunk":
        vlan = E(iface, "vlan", trunk="yes")
        if nic.native_vlan is not None:
            # libvirt sets vlan_mode=native-untagged, tag=N and lists N in trunks.
            E(vlan, "tag", id=str(nic.native_vlan), nativeMode="untagged")
        for v in sorted(nic.trunk_vlans):
            E(vlan, "tag", id=str(v))
    E(iface, "model", type=nic.model)
    return iface


def interface_xml(nic: VmNic) -> str:
    return etree.tostring(interface_element(nic), encoding="unicode", pretty_print=True)
