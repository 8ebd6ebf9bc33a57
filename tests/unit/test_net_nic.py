"""The VM NIC contract: <interface> XML for access and trunk NICs."""

from __future__ import annotations

import pytest
from lxml import etree

from ahvlite.errors import InvalidSpec
from ahvlite.net.nic import VmNic, interface_xml

VM = "4b0d1e0e-54c4-4a53-9f0e-3a0a3b1c2d3e"


def parse(nic: VmNic):
    return etree.fromstring(interface_xml(nic))


def test_access_nic_is_an_ovs_bridge_port_with_one_tag():
    x = parse(VmNic(vm_uuid=VM, mac="52:54:00:AA:00:01", vlan=10))
    assert x.get("type") == "bridge"
    assert x.find("source").get("bridge") == "br0"
    assert x.find("mac").get("address") == "52:54:00:aa:00:01"
    vp = x.find("virtualport")
    assert vp.get("type") == "openvswitch"
    iface_id = vp.find("parameters").get("interfaceid")
    assert iface_id == VmNic(vm_uuid=VM, mac="52:54:00:aa:00:01").interface_id
    tags = x.findall("vlan/tag")
    assert [t.get("id") for t in tags] == ["10"] and x.find("vlan").get("trunk") is None
    assert x.find("model").get("type") == "virtio"


def test_untagged_access_nic_has_no_vlan_element():
    assert parse(VmNic(vm_uuid=VM, mac="52:54:00:aa:00:01")).find("vlan") is None


def test_trunk_nic_native_untagged_plus_tagged_vlans():
    x = parse(VmNic(vm_uuid=VM, mac="52:54:00:aa:00:02", mode="trunk", native_vlan=10,
                    trunk_vlans=(30, 20)))
    vlan = x.find("vlan")
    assert vlan.get("trunk") == "yes"
    tags = [(t.get("id"), t.get("nativeMode")) for t in vlan.findall("tag")]
    assert tags == [("10", "untagged"), ("20", None), ("30", None)]


def test_interface_ids_differ_per_vm_and_mac():
    a = VmNic(vm_uuid=VM, mac="52:54:00:aa:00:01").interface_id
    b = VmNic(vm_uuid=VM, mac="52:54:00:aa:00:02").interface_id
    c = VmNic(vm_uuid="00000000-0000-4000-8000-000000000001", mac="52:54:00:aa:00:01")
    assert len({a, b, c.interface_id}) == 3


@pytest.mark.parametrize(("nic", "field"), [
    (VmNic(vm_uuid=VM, mac="m", vlan=4095), "nic.vlan"),
    (VmNic(vm_uuid=VM, mac="m", mode="trunk"), "nic.trunk_vlans"),
    (VmNic(vm_uuid=VM, mac="m", mode="trunk", vlan=5, trunk_vlans=(6,)), "nic.vlan"),
    (VmNic(vm_uuid=VM, mac="m", trunk_vlans=(6,)), "nic.mode"),
    (VmNic(vm_uuid=VM, mac="m", mode="trunk", native_vlan=6, trunk_vlans=(6,)),
     "nic.native_vlan"),
    (VmNic(vm_uuid="not-a-uuid", mac="m"), "nic.vm_uuid"),
])
def test_bad_nics_name_the_field(nic, field):
    with pytest.raises(InvalidSpec) as e:
        interface_xml(nic)
    assert e.value.field == field
