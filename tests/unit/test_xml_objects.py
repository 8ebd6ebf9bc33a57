"""Domain XML objects: parse, change, serialize; what ahvlite does not model survives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lxml import etree

from ahvlite.errors import InvalidSpec
from ahvlite.virt.xml.devices import Disk
from ahvlite.virt.xml.domain import Domain

DATA = Path(__file__).parent.parent / "data" / "xml"
REGEN = os.environ.get("AHVLITE_REGEN_GOLDEN") == "1"


def golden(name: str, text: str) -> None:
    """Compare ``text`` with ``DATA/name``; AHVLITE_REGEN_GOLDEN=1 rewrites the file."""
    path = DATA / name
    if REGEN:
        path.write_text(text)
    assert text == path.read_text()


def edit_libvirt(d: Domain) -> None:
    d.memory_mib = 2048
    d.current_memory_mib = 1536
    d.vcpus = 4
    d.ensure_meta().labels = {"tier": "web"}
    d.ensure_meta().set_disk("data", "sdb", "vm-web1-data.qcow2")
    extra = Disk()
    extra.type, extra.device, extra.source_file = "file", "disk", "/shared/vm-web1-data.qcow2"
    extra.target_dev, extra.target_bus = "sdb", "scsi"
    assert d.devices is not None
    d.devices.disks.append(extra)
    d.on_crash = "restart"


def edit_minimal(d: Domain) -> None:
    d.genid = "22222222-3333-4444-8555-666666666666"
    d.ensure_features().acpi = True


@pytest.mark.parametrize(("case", "edit"), [("domain-libvirt", edit_libvirt),
                                            ("domain-minimal", edit_minimal)])
def test_golden_round_trip(case, edit):
    d = Domain.parse((DATA / f"{case}-in.xml").read_text())
    edit(d)
    golden(f"{case}-out.xml", d.to_xml())


def test_unmodelled_parts_survive_a_round_trip():
    src = (DATA / "domain-libvirt-in.xml").read_text()
    out = etree.fromstring(Domain.parse(src).to_xml().encode())
    assert out.find("seclabel/label").text == "+64055:+64055"
    assert out.find("blkiotune/weight").text == "500"
    assert out.find("devices/disk/address").get("controller") == "0"
    assert out.find("cpu/feature").get("name") == "hypervisor"
    assert out.find("{https://example.com/app/1}app") is None  # it is under metadata
    assert out.find("metadata/{https://example.com/app/1}app/"
                    "{https://example.com/app/1}owner").text == "team-a"
    assert out.get("id") == "7"


def test_reading_typed_values_and_units():
    d = Domain.parse((DATA / "domain-libvirt-in.xml").read_text())
    assert (d.name, d.memory_mib, d.vcpus) == ("web1", 1024, 2)
    assert d.cpu is not None and d.cpu.model == "Westmere" and d.cpu.sockets == 2
    assert d.devices is not None
    iface = d.devices.interfaces[0]
    assert iface.vlan_tags == [10] and not iface.trunk and iface.source_bridge == "br0"
    assert d.meta is not None and d.meta.volumes == {"boot": "vm-web1-boot.qcow2"}
    assert Domain.parse((DATA / "domain-minimal-in.xml").read_text()).memory_mib == 128


def test_reading_does_not_create_elements():
    src = (DATA / "domain-minimal-in.xml").read_text()
    d = Domain.parse(src)
    assert d.cpu is None and d.clock is None and d.meta is None and d.genid is None
    assert d.devices is not None and len(d.devices.disks) == 0
    assert etree.tostring(d.el) == etree.tostring(Domain.parse(src).el)


def test_unsetting_a_value_prunes_empty_elements():
    d = Domain.parse((DATA / "domain-libvirt-in.xml").read_text())
    assert d.devices is not None
    disk = d.devices.disks[0]
    disk.driver_cache = None
    disk.driver_type = None
    disk.driver_name = None
    assert disk.el.find("driver") is None
    d.genid = None
    assert d.el.find("genid") is None


@pytest.mark.parametrize("xml", ["<domain><name>x</name>", "<network/>"])
def test_not_a_domain_is_a_clear_error(xml):
    with pytest.raises(InvalidSpec):
        Domain.parse(xml)


def test_bad_memory_unit_names_the_field():
    d = Domain.parse("<domain><memory unit='parsecs'>4</memory></domain>")
    with pytest.raises(InvalidSpec) as e:
        _ = d.memory_mib
    assert "unit" in e.value.field
