"""spec -> domain XML: the policy, libvirt's own schema, and libvirt's test driver."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lxml import etree

from ahvlite.errors import InvalidSpec
from ahvlite.spec.network import NetworkSpec, VlanNetworkSpec
from ahvlite.spec.vm import BootSpec, DiskSpec, NicSpec, VmSpec
from ahvlite.virt import designer
from ahvlite.virt.conn import connection
from ahvlite.virt.designer import Design, DiskPlacement, HostPolicy

from .test_xml_objects import golden

NETS = NetworkSpec(networks=[VlanNetworkSpec(name="vlan10", vlan=10),
                             VlanNetworkSpec(name="vlan20", vlan=20)])
UUID = "4b0d1e0e-54c4-4a53-9f0e-3a0a3b1c2d3e"
GENID = "11111111-2222-4333-8444-555555555555"


def full_spec(**over) -> VmSpec:
    values = dict(
        name="web1", uuid=UUID, genid=GENID, vcpus=2, memory_mib=512, overcommit=True,
        vtpm=True, boot=BootSpec(firmware="uefi", secure_boot=True),
        disks=[DiskSpec(size_mib=1024), DiskSpec(image="base", bus="virtio")],
        nics=[NicSpec(network="vlan10", mac="52:54:00:00:00:01"),
              NicSpec(network="vlan20", mac="52:54:00:00:00:02", mode="trunk",
                      trunk_vlans=(30, 40))],
        labels={"app": "web"}, fw_cfg={"opt/ahvlite/ip": "10.0.0.5/24"},
        serial_log="/var/log/libvirt/qemu/web1-serial.log")
    values.update(over)
    return VmSpec(**values)


def ctx_for(spec: VmSpec, **over) -> Design:
    disks = {n: DiskPlacement(f"/pool/vm-{spec.name}-{n}.qcow2", f"vm-{spec.name}-{n}.qcow2")
             for n in spec.disk_names()}
    values = dict(host=HostPolicy(domain_type="kvm", cpu_model="Westmere"), disks=disks,
                  networks=NETS, nvram_path=f"/pool/vm-{spec.name}-VARS.fd")
    values.update(over)
    return Design(**values)


def xml_of(spec: VmSpec, **over) -> etree._Element:
    return etree.fromstring(designer.design_xml(spec, ctx_for(spec, **over)).encode())


SPECS = {
    "full": full_spec(),
    "bios-plain": VmSpec(name="plain", uuid=UUID, genid=GENID, memory_mib=128,
                         disks=[DiskSpec(size_mib=64)]),
    "lab-kernel": VmSpec(name="labg", uuid=UUID, genid=GENID, memory_mib=128,
                         boot=BootSpec(kernel="/k/vmlinuz", initrd="/k/initrd.img",
                                       cmdline="console=ttyS0"),
                         disks=[DiskSpec(size_mib=64), DiskSpec(size_mib=64, bus="sata")],
                         nics=[NicSpec(network="br0", mac="52:54:00:00:00:03")],
                         fw_cfg={"opt/ahvlite/ip": "10.1.0.9/24"}),
    "ide-uefi": VmSpec(name="old", uuid=UUID, genid=GENID, memory_mib=256,
                       boot=BootSpec(firmware="uefi"),
                       disks=[DiskSpec(size_mib=64, bus="ide")]),
}


@pytest.mark.parametrize("case", ["full", "lab-kernel"])
def test_golden_designs(case):
    spec = SPECS[case]
    golden(f"designer-{case}-out.xml", designer.design_xml(spec, ctx_for(spec)))


@pytest.mark.parametrize("case", sorted(SPECS))
def test_every_design_passes_libvirts_schema(case, tmp_path):
    spec = SPECS[case]
    path = tmp_path / f"{case}.xml"
    path.write_text(designer.design_xml(spec, ctx_for(spec)))
    result = subprocess.run(["virt-xml-validate", str(path), "domain"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize("case", sorted(SPECS))
def test_every_design_defines_and_starts_on_the_test_driver(case):
    spec = SPECS[case].model_copy(update={"name": f"dz-{case}"})
    xml = designer.design_xml(spec, ctx_for(spec))
    with connection("test:///default") as conn:
        dom = conn.defineXML(xml)
        try:
            dom.create()
            back = etree.fromstring(dom.XMLDesc(0).encode())
            assert back.findtext("genid") == GENID
            assert back.findtext("uuid") == UUID
        finally:
            dom.destroy()
            dom.undefine()


def test_virtio_scsi_has_one_queue_per_vcpu():
    for vcpus in (1, 3, 8):
        x = xml_of(full_spec(vcpus=vcpus))
        ctrl = x.find("devices/controller[@type='scsi']")
        assert ctrl.get("model") == "virtio-scsi"
        assert ctrl.find("driver").get("queues") == str(vcpus)
        assert x.find("cpu/topology").get("sockets") == str(vcpus)


def test_acpi_apic_genid_crash_policy_clock_and_cpu():
    x = xml_of(full_spec())
    assert x.find("features/acpi") is not None and x.find("features/apic") is not None
    assert x.findtext("genid") == GENID
    assert x.findtext("on_crash") == "restart"
    assert x.find("clock").get("offset") == "utc"
    assert x.find("cpu").get("mode") == "custom"
    assert x.findtext("cpu/model") == "Westmere"


def test_overcommit_balloon_reports_free_pages_and_starts_below_memory():
    x = xml_of(full_spec(overcommit=True, memory_mib=1024))
    balloon = x.find("devices/memballoon")
    assert balloon.get("model") == "virtio" and balloon.get("freePageReporting") == "on"
    assert int(x.findtext("currentMemory")) < int(x.findtext("memory")) == 1024
    y = xml_of(full_spec(overcommit=False, memory_mib=1024))
    assert y.findtext("currentMemory") == y.findtext("memory")
    assert y.find("devices/memballoon").get("freePageReporting") is None


def test_secure_boot_uses_the_secboot_firmware_with_smm_and_per_vm_nvram():
    x = xml_of(full_spec())
    loader = x.find("os/loader")
    assert loader.text.endswith("secboot.fd") and loader.get("secure") == "yes"
    assert x.find("features/smm") is not None
    assert x.findtext("os/nvram") == "/pool/vm-web1-VARS.fd"
    plain = xml_of(full_spec(boot=BootSpec(firmware="uefi")))
    assert plain.find("os/loader").get("secure") == "no"
    assert plain.find("features/smm") is None
    assert xml_of(SPECS["bios-plain"]).find("os/loader") is None


def test_tpm_crb_with_swtpm_and_vnc_on_localhost_only():
    x = xml_of(full_spec())
    tpm = x.find("devices/tpm")
    assert tpm.get("model") == "tpm-crb"
    assert tpm.find("backend").get("type") == "emulator"
    assert tpm.find("backend").get("version") == "2.0"
    vnc = x.find("devices/graphics[@type='vnc']")
    assert vnc.get("listen") == "127.0.0.1" and vnc.find("listen").get("address") == "127.0.0.1"
    assert xml_of(full_spec(vtpm=False)).find("devices/tpm") is None
    assert x.find("devices/serial/log").get("file").endswith("web1-serial.log")
    assert x.find("devices/console/target").get("type") == "serial"


def test_nics_come_from_the_networking_layer():
    x = xml_of(full_spec())
    access, trunk = x.findall("devices/interface")
    assert access.find("virtualport").get("type") == "openvswitch"
    assert [t.get("id") for t in access.findall("vlan/tag")] == ["10"]
    assert trunk.find("vlan").get("trunk") == "yes"
    tags = [(t.get("id"), t.get("nativeMode")) for t in trunk.findall("vlan/tag")]
    assert tags == [("20", "untagged"), ("30", None), ("40", None)]
    ids = {i.find("virtualport/parameters").get("interfaceid") for i in (access, trunk)}
    assert len(ids) == 2


def test_disk_names_buses_and_boot_order():
    spec = VmSpec(name="d", uuid=UUID, memory_mib=128, disks=[
        DiskSpec(size_mib=1), DiskSpec(size_mib=1, bus="sata"), DiskSpec(size_mib=1, bus="virtio"),
        DiskSpec(size_mib=1, name="logs")])
    x = xml_of(spec)
    targets = [(d.find("target").get("dev"), d.find("target").get("bus"), d.findtext("serial"))
               for d in x.findall("devices/disk")]
    assert targets == [("sda", "scsi", "disk0"), ("sdb", "sata", "disk1"),
                       ("vda", "virtio", "disk2"), ("sdc", "scsi", "logs")]
    assert [d.find("boot") is not None for d in x.findall("devices/disk")] == [
        True, False, False, False]
    assert x.find("os/type").get("machine") == "q35"
    assert xml_of(SPECS["ide-uefi"]).find("os/type").get("machine") == "pc"
    assert designer.target_dev("scsi", 26) == "sdaa"


def test_direct_kernel_boot_and_fw_cfg_for_the_lab_guest():
    x = xml_of(SPECS["lab-kernel"])
    assert x.findtext("os/kernel") == "/k/vmlinuz"
    assert x.findtext("os/cmdline") == "console=ttyS0"
    assert x.find("sysinfo").get("type") == "fwcfg"
    assert x.find("sysinfo/entry").get("name") == "opt/ahvlite/ip"
    assert all(d.find("boot") is None for d in x.findall("devices/disk"))


def test_metadata_records_disk_volumes_networks_and_labels():
    x = xml_of(full_spec())
    ns = {"ahv": "https://ahvlite.io/xmlns/vm/1"}
    vm = x.find("metadata/ahv:vm", ns)
    assert vm.findtext("ahv:overcommit", namespaces=ns) == "yes"
    disks = [(d.get("name"), d.get("dev"), d.get("volume")) for d in vm.findall("ahv:disk", ns)]
    assert disks == [("disk0", "sda", "vm-web1-disk0.qcow2"),
                     ("disk1", "vda", "vm-web1-disk1.qcow2")]
    assert [n.get("network") for n in vm.findall("ahv:nic", ns)] == ["vlan10", "vlan20"]


def test_unknown_network_names_the_field_and_what_exists():
    with pytest.raises(InvalidSpec) as e:
        xml_of(full_spec(nics=[NicSpec(network="nosuch", mac="52:54:00:00:00:09")]))
    assert e.value.field == "nic.network" and "vlan10" in e.value.allowed


def test_uefi_needs_a_place_for_nvram():
    with pytest.raises(InvalidSpec):
        xml_of(full_spec(), nvram_path=None)


def test_nics_without_mac_get_distinct_ones():
    spec = full_spec(nics=[NicSpec(network="br0"), NicSpec(network="br0")])
    macs = [i.find("mac").get("address") for i in xml_of(spec).findall("devices/interface")]
    assert len(set(macs)) == 2 and all(m.startswith("52:54:00:") for m in macs)


def test_designer_does_no_io(monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("I/O in the designer")

    monkeypatch.setattr(Path, "open", boom)
    monkeypatch.setattr("builtins.open", boom)
    designer.design_xml(full_spec(), ctx_for(full_spec()))


def test_q35_keeps_spare_root_ports_for_hot_plug_and_has_no_usb():
    spec = full_spec()  # 1 virtio disk, 2 NICs
    x = xml_of(spec)
    ports = x.findall("devices/controller[@model='pcie-root-port']")
    # one each for virtio-scsi, balloon, rng, the virtio disk and 2 NICs, plus spares
    assert len(ports) == 3 + 1 + 2 + designer.SPARE_ROOT_PORTS
    assert x.find("devices/controller[@type='usb']").get("model") == "none"
    assert not xml_of(SPECS["ide-uefi"]).findall("devices/controller[@model='pcie-root-port']")
