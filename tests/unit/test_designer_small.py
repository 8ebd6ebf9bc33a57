"""The lab's small guests go through the designer: the same documents
``guest.simple_domain_xml`` built by hand before (golden files written from its output),
valid for libvirt's schema, with NICs of every kind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ahvlite.spec.smallguest import SimpleGuest
from ahvlite.spec.vif import OvsAccessNic, OvsTrunkNic
from ahvlite.virt import designer
from ahvlite.virt.xml.domain import Domain

from .test_xml_objects import golden

U = "4b0d1e0e-54c4-4a53-9f0e-3a0a3b1c2d3e"

SMALL = {
    "kernel": SimpleGuest(
        name="probe", uuid=U, domain_type="kvm", kernel=Path("/g/vmlinuz"),
        initrd=Path("/g/initrd.img"), cmdline="console=ttyS0 quiet panic=-1", bridge="br0",
        serial_log=Path("/var/log/libvirt/qemu/probe-serial.log")),
    "disk": SimpleGuest(
        name="disky", uuid=U, domain_type="qemu", memory_mib=256, vcpus=2,
        disk=Path("/pool/disky.qcow2"), bridge="br0", mac="52:54:00:aa:bb:cc",
        fw_cfg={"opt/ahvlite/ip": "10.0.0.5/24", "opt/ahvlite/hostname": "disky"},
        machine="pc"),
}


@pytest.mark.parametrize("case", sorted(SMALL))
def test_small_guests_render_as_before(case):
    golden(f"small-guest-{case}-out.xml", designer.simple_domain_xml(SMALL[case]))


@pytest.mark.parametrize("case", sorted(SMALL))
def test_small_guests_pass_libvirts_schema(case, tmp_path):
    path = tmp_path / f"{case}.xml"
    path.write_text(designer.simple_domain_xml(SMALL[case]))
    result = subprocess.run(["virt-xml-validate", str(path), "domain"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout


def test_a_small_guest_carries_further_nics_as_rendered_for_vms():
    access = OvsAccessNic(vm_uuid=U, mac="52:54:00:00:00:01", vlan=10)
    trunk = OvsTrunkNic(vm_uuid=U, mac="52:54:00:00:00:02", trunk_vlans=(20,),
                        native_vlan=10)
    g = SimpleGuest(name="n", uuid=U, domain_type="kvm", nics=(access, trunk))
    d = Domain.parse(designer.simple_domain_xml(g))
    assert d.devices is not None
    ifaces = list(d.devices.interfaces)
    assert [i.mac for i in ifaces] == [access.mac, trunk.mac]
    assert [i.interface_id for i in ifaces] == [access.interface_id, trunk.interface_id]
    assert [i.to_xml() for i in ifaces] == [designer.interface_for(n).to_xml()
                                            for n in (access, trunk)]
    assert ifaces[0].vlan_tags == [10] and ifaces[1].trunk and ifaces[1].native_vlan == 10
