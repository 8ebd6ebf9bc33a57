"""The VM NIC contract: NIC kinds as data (spec.vif) rendered as <interface> XML by the
designer, for OVS access and trunk ports and plain bridges."""

from __future__ import annotations

import pytest
from lxml import etree

from ahvlite.errors import InvalidSpec
from ahvlite.spec.vif import BridgeNic, Nic, OvsAccessNic, OvsTrunkNic
from ahvlite.virt.designer import interface_for

VM = "4b0d1e0e-54c4-4a53-9f0e-3a0a3b1c2d3e"


def interface_xml(nic: Nic) -> str:
    return interface_for(nic).to_xml()


def parse(nic: Nic):
    return etree.fromstring(interface_xml(nic))


def test_access_nic_is_an_ovs_bridge_port_with_one_tag():
    x = parse(OvsAccessNic(vm_uuid=VM, mac="52:54:00:AA:00:01", vlan=10))
    assert x.get("type") == "bridge"
    assert x.find("source").get("bridge") == "br0"
    assert x.find("mac").get("address") == "52:54:00:aa:00:01"
    vp = x.find("virtualport")
    assert vp.get("type") == "openvswitch"
    iface_id = vp.find("parameters").get("interfaceid")
    assert iface_id == OvsAccessNic(vm_uuid=VM, mac="52:54:00:aa:00:01").interface_id
    tags = x.findall("vlan/tag")
    assert [t.get("id") for t in tags] == ["10"] and x.find("vlan").get("trunk") is None
    assert x.find("model").get("type") == "virtio"


def test_untagged_access_nic_has_no_vlan_element():
    assert parse(OvsAccessNic(vm_uuid=VM, mac="52:54:00:aa:00:01")).find("vlan") is None


def test_trunk_nic_native_untagged_plus_tagged_vlans():
    x = parse(OvsTrunkNic(vm_uuid=VM, mac="52:54:00:aa:00:02", native_vlan=10,
                          trunk_vlans=(30, 20)))
    vlan = x.find("vlan")
    assert vlan.get("trunk") == "yes"
    tags = [(t.get("id"), t.get("nativeMode")) for t in vlan.findall("tag")]
    assert tags == [("10", "untagged"), ("20", None), ("30", None)]


def test_interface_ids_differ_per_vm_and_mac():
    a = OvsAccessNic(vm_uuid=VM, mac="52:54:00:aa:00:01").interface_id
    b = OvsAccessNic(vm_uuid=VM, mac="52:54:00:aa:00:02").interface_id
    c = OvsAccessNic(vm_uuid="00000000-0000-4000-8000-000000000001", mac="52:54:00:aa:00:01")
    assert len({a, b, c.interface_id}) == 3


@pytest.mark.parametrize(("nic", "field"), [
    (OvsAccessNic(vm_uuid=VM, mac="m", vlan=4095), "nic.vlan"),
    (OvsTrunkNic(vm_uuid=VM, mac="m"), "nic.trunk_vlans"),
    (OvsTrunkNic(vm_uuid=VM, mac="m", trunk_vlans=(0,)), "nic.trunk_vlans"),
    (OvsTrunkNic(vm_uuid=VM, mac="m", native_vlan=4095, trunk_vlans=(6,)), "nic.native_vlan"),
    (OvsTrunkNic(vm_uuid=VM, mac="m", native_vlan=6, trunk_vlans=(6,)),
     "nic.native_vlan"),
    (OvsTrunkNic(vm_uuid="not-a-uuid", mac="m", trunk_vlans=(6,)), "nic.vm_uuid"),
    (OvsAccessNic(vm_uuid="not-a-uuid", mac="m"), "nic.vm_uuid"),
])
def test_bad_nics_name_the_field(nic, field):
    with pytest.raises(InvalidSpec) as e:
        interface_xml(nic)
    assert e.value.field == field


def test_a_linux_bridge_nic_has_no_ovs_port():
    x = parse(BridgeNic(bridge="virbr0", mac="52:54:00:AA:00:03"))
    assert (x.get("type"), x.find("source").get("bridge")) == ("bridge", "virbr0")
    assert x.find("mac").get("address") == "52:54:00:aa:00:03"
    assert x.find("virtualport") is None and x.find("vlan") is None
    assert x.find("model").get("type") == "virtio"


def test_a_plain_ovs_nic_leaves_mac_and_interface_id_to_libvirt():
    x = parse(BridgeNic(bridge="br0", openvswitch=True))
    assert x.find("mac") is None
    vp = x.find("virtualport")
    assert vp.get("type") == "openvswitch" and vp.find("parameters") is None
