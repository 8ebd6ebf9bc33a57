"""VmSpec rules: each mistake names the field, the value and what is allowed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ahvlite.errors import InvalidSpec
from ahvlite.spec.errors import build
from ahvlite.spec.vm import (
    DiskSpec,
    NicSpec,
    VmSpec,
    parse_nic,
    parse_size_mib,
)


@pytest.mark.parametrize("name", ["has space", "quote'd", 'dq"', "a<b", "a&b", "a/b",
                                  "a\\b", "", ".hidden", "-x", "x" * 65, "é"])
def test_bad_names(name):
    with pytest.raises(InvalidSpec) as e:
        build(VmSpec, name=name)
    assert e.value.field == "name" and e.value.value == name
    assert "letters, digits" in e.value.allowed


@pytest.mark.parametrize("name", ["a", "web-1", "db_2.prod", "X" * 64, "_tmp"])
def test_good_names(name):
    assert build(VmSpec, name=name).name == name


@pytest.mark.parametrize("mib", [0, 63, 4 * 1024 * 1024 + 1])
def test_memory_bounds(mib):
    with pytest.raises(InvalidSpec) as e:
        build(VmSpec, name="v", memory_mib=mib)
    assert e.value.field == "memory_mib" and e.value.value == mib and "64" in e.value.allowed


def test_unknown_disk_bus_lists_the_buses():
    with pytest.raises(InvalidSpec) as e:
        build(VmSpec, name="v", disks=[{"size_mib": 1, "bus": "floppy"}])
    assert e.value.field == "disk.bus" and e.value.value == "floppy"
    assert e.value.allowed == "one of scsi, virtio, sata, ide"


def test_ide_is_accepted_with_a_warning():
    spec = build(VmSpec, name="v", disks=[{"size_mib": 1, "bus": "ide"}])
    assert any("slow" in w for w in spec.warnings())
    assert build(VmSpec, name="v", disks=[{"size_mib": 1}]).warnings() == []


@pytest.mark.parametrize(("disk", "needle"), [
    ({}, "exactly one"), ({"image": "x", "path": "/p"}, "exactly one"),
    ({"size_mib": 1, "path": "/p"}, "unset for path")])
def test_a_disk_needs_exactly_one_source(disk, needle):
    with pytest.raises(InvalidSpec) as e:
        build(DiskSpec, **disk)
    assert needle in e.value.allowed


def test_duplicate_disk_names_and_macs():
    with pytest.raises(InvalidSpec) as e:
        build(VmSpec, name="v", disks=[{"size_mib": 1, "name": "a"},
                                      {"size_mib": 1, "name": "a"}])
    assert (e.value.field, e.value.value) == ("disks.name", "a")
    with pytest.raises(InvalidSpec) as e:
        build(VmSpec, name="v", nics=[{"network": "n", "mac": "52:54:00:00:00:01"},
                                     {"network": "n", "mac": "52:54:00:00:00:01"}])
    assert e.value.field == "nics.mac"


def test_default_disk_names_skip_taken_ones():
    spec = build(VmSpec, name="v", disks=[{"size_mib": 1}, {"size_mib": 1, "name": "disk0"},
                                          {"size_mib": 1}])
    assert spec.disk_names() == ["disk1", "disk0", "disk2"]


@pytest.mark.parametrize(("nic", "field"), [
    ({"network": "n", "mac": "01:00:00:00:00:01"}, "nic.mac"),  # multicast
    ({"network": "n", "mac": "52:54:00"}, "nic.mac"),
    ({"network": "n", "mode": "trunk"}, "nic.trunk_vlans"),
    ({"network": "n", "trunk_vlans": (5,)}, "nic.mode"),
    ({"network": "n", "mode": "trunk", "trunk_vlans": (4095,)}, "nic.trunk_vlans"),
    ({"network": "a b"}, "nic.network"),
])
def test_bad_nics(nic, field):
    with pytest.raises(InvalidSpec) as e:
        build(NicSpec, **nic)
    assert e.value.field == field


def test_secure_boot_rules():
    with pytest.raises(InvalidSpec) as e:
        build(VmSpec, name="v", boot={"secure_boot": True})
    assert e.value.field == "boot.secure_boot"
    with pytest.raises(InvalidSpec) as e:
        build(VmSpec, name="v", boot={"firmware": "uefi", "secure_boot": True},
              disks=[{"size_mib": 1, "bus": "ide"}])
    assert e.value.field == "disks.bus"


def test_bad_uuid_and_fw_cfg_key():
    with pytest.raises(InvalidSpec):
        build(VmSpec, name="v", uuid="nope")
    with pytest.raises(InvalidSpec) as e:
        build(VmSpec, name="v", fw_cfg={"etc/passwd": "x"})
    assert e.value.field == "fw_cfg"


def test_cli_shorthands():
    assert parse_size_mib("10G") == 10240 and parse_size_mib("512") == 512
    assert parse_size_mib("1TiB") == 1024 * 1024
    with pytest.raises(InvalidSpec):
        parse_size_mib("lots")
    nic = parse_nic("vlan10:trunk=20,10")
    assert (nic.network, nic.mode, nic.trunk_vlans) == ("vlan10", "trunk", (10, 20))
    assert parse_nic("br0:mac=52:54:00:AA:BB:CC").mac == "52:54:00:aa:bb:cc"
    with pytest.raises(InvalidSpec):
        parse_nic("br0:speed=10")


@given(st.lists(st.sampled_from(["br0", "vlan10"]), max_size=20))
def test_with_macs_gives_every_nic_a_distinct_mac(nets):
    spec = VmSpec(name="v", nics=[NicSpec(network=n) for n in nets]).with_macs()
    macs = [n.mac for n in spec.nics]
    assert None not in macs and len(set(macs)) == len(macs)


@given(st.text(max_size=70))
def test_name_rule_rejects_every_dangerous_character(name):
    try:
        build(VmSpec, name=name)
    except InvalidSpec:
        return
    assert not set(name) & set(" '\"<>&/\\\n\t")
    assert 1 <= len(name) <= 64


@pytest.mark.parametrize("name", ["web\n", "0\n", "a\nb"])
def test_a_trailing_newline_is_no_loophole(name):
    with pytest.raises(InvalidSpec):
        build(VmSpec, name=name)


@pytest.mark.parametrize(("values", "field"), [
    ({"labels": {"k": "a\x00b"}}, "labels.k"),
    ({"labels": {"k\n": "v"}}, "labels (key)"),
    ({"labels": {"k": "\x9b31m"}}, "labels.k"),  # C1 CSI
    ({"labels": {"k": "\ud800"}}, "labels.k"),
    ({"labels": {"k": "\uffff"}}, "labels.k"),
    ({"fw_cfg": {"opt/x": "a\tb"}}, "fw_cfg.opt/x"),
    ({"boot": {"kernel": "/k", "cmdline": "a\x7fb"}}, "boot.cmdline"),
    ({"boot": {"kernel": "/k\x01"}}, "boot.kernel"),
    ({"serial_log": "/var/log/libvirt/qemu/x\n.log"}, "serial_log"),
    ({"disks": [{"path": "/p\x00"}]}, "disk.path"),
    ({"disks": [{"volume": "../etc/shadow"}]}, "disk.volume"),
    ({"disks": [{"clone_of": "a/b"}]}, "disk.volume"),
])
def test_text_xml_cannot_carry_is_refused_where_it_enters(values, field):
    with pytest.raises(InvalidSpec) as err:
        build(VmSpec, name="v", **values)
    assert err.value.field == field


def test_ordinary_text_passes():
    spec = build(VmSpec, name="v", labels={"ahvlite.io/role": "web ✓"},
                 fw_cfg={"opt/ahvlite/ip": "10.0.0.2/24"},
                 boot={"kernel": "/k", "cmdline": "console=ttyS0 quiet"})
    assert spec.labels["ahvlite.io/role"] == "web ✓"
