"""The CPU level on recorded libvirt XML (a lab host, TCG) and libvirt's own CPU map."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lxml import etree

from ahvlite.cluster.cpustore import CpuLevel, StateCpuLevelStore
from ahvlite.errors import InvalidSpec
from ahvlite.spec.vm import DiskSpec, VmSpec
from ahvlite.virt import cpu, designer
from ahvlite.virt.conn import connection
from ahvlite.virt.cpu import CpuDef
from ahvlite.virt.designer import Design, DiskPlacement, HostPolicy
from tests.stores import sqlite_state

DATA = Path(__file__).parent.parent / "data" / "libvirt"
DOMCAPS = (DATA / "domcaps-lab-qemu-q35.xml").read_text()
BASELINE = (DATA / "cpu-baseline-lab-qemu.xml").read_text()


def full(c: CpuDef) -> frozenset[str]:
    return cpu.expanded(c, cpu.model_features(c.model))


def test_host_model_and_target_from_domain_capabilities():
    host = cpu.host_model_of(DOMCAPS)
    assert host is not None
    assert (host.model, host.vendor) == ("EPYC", "AMD")
    assert "vaes" in host.features and "vme" in host.disabled
    assert not set(host.features) & set(host.disabled)
    t = cpu.target_of(DOMCAPS)
    assert (t.arch, t.domain_type, t.machine) == ("x86_64", "qemu", "pc-q35-7.2")
    assert t.emulator and t.emulator.endswith("qemu-system-x86_64")
    assert "Westmere" in cpu.usable_models(DOMCAPS)
    assert "Icelake-Server" not in cpu.usable_models(DOMCAPS)


def test_cpu_xml_round_trips():
    host = cpu.host_model_of(DOMCAPS)
    assert host is not None
    assert cpu.parse_cpu_xml(host.to_xml()) == host
    el = etree.fromstring(host.to_xml().encode())
    assert (el.get("mode"), el.get("match")) == ("custom", "exact")
    assert el.find("model").get("fallback") == "forbid"


def test_baseline_of_identical_hosts_gives_nothing_up():
    host = cpu.host_model_of(DOMCAPS)
    assert host is not None
    base = cpu.parse_cpu_xml(BASELINE)
    assert base.model == "EPYC"
    assert cpu.features_given_up(full(host), full(base)) == []


def test_a_newer_host_gives_up_what_the_older_baseline_lacks():
    # Feature sets from libvirt's own CPU map, not written by hand.
    ice, haswell = CpuDef("Icelake-Server"), CpuDef("Haswell")
    lost = cpu.features_given_up(full(ice), full(haswell))
    assert {"avx512f", "avx512vl", "vaes"} <= set(lost)
    assert "avx2" not in lost  # both have it
    assert cpu.features_given_up(full(haswell), full(haswell)) == []
    assert "avx2" in cpu.model_features("EPYC")
    assert cpu.model_features("Nosuch") == frozenset()


def test_missing_features_come_from_libvirts_comparison_message():
    message = (DATA / "cpu-compare-icelake-lab-qemu.txt").read_text()
    missing = cpu.missing_from_message(message)
    assert "avx512f" in missing and missing == sorted(missing)
    assert cpu.missing_from_message("something else") == []


def level_policy(domain_type: str, unusable: frozenset[str]) -> HostPolicy:
    base = cpu.parse_cpu_xml(BASELINE)
    return HostPolicy(domain_type=domain_type, cpu_model=base.model,
                      cpu_features=base.features, cpu_disabled=base.disabled,
                      cpu_unusable=unusable)


def design(policy: HostPolicy) -> str:
    spec = VmSpec(name="lvl", uuid="4b0d1e0e-54c4-4a53-9f0e-3a0a3b1c2d3e", memory_mib=128,
                  vcpus=2, disks=[DiskSpec(size_mib=64)])
    return designer.design_xml(spec, Design(host=policy, disks={
        "disk0": DiskPlacement("/pool/lvl-disk0.qcow2")}))


def test_designer_uses_the_level_with_custom_exact_and_its_features():
    base = cpu.parse_cpu_xml(BASELINE)
    x = etree.fromstring(design(level_policy("kvm", frozenset())).encode())
    el = x.find("cpu")
    assert (el.get("mode"), el.get("match")) == ("custom", "exact")
    assert el.findtext("model") == "EPYC"
    got = cpu.parse_cpu(el)
    assert got.features == base.features and got.disabled == base.disabled
    assert x.find("cpu/topology").get("sockets") == "2"


def test_features_the_domain_type_cannot_provide_are_disabled_not_required():
    x = etree.fromstring(design(level_policy("qemu", frozenset({"vaes", "la57"}))).encode())
    got = cpu.parse_cpu(x.find("cpu"))
    assert "vaes" not in got.features and "la57" not in got.features
    assert {"vaes", "la57"} <= set(got.disabled)


def test_cpu_element_replaces_earlier_features_and_is_idempotent():
    policy = level_policy("qemu", frozenset({"vaes"}))
    dom = designer.design(VmSpec(name="i", memory_mib=128), Design(host=HostPolicy(),
                                                                   disks={}))
    designer.cpu_element(dom, policy, 1)
    once = dom.to_xml()
    designer.cpu_element(dom, policy, 1)
    assert dom.to_xml() == once
    designer.cpu_element(dom, HostPolicy(cpu_model="Westmere"), 1)
    assert cpu.parse_cpu(etree.fromstring(dom.to_xml().encode()).find("cpu")) == CpuDef(
        "Westmere")


def test_level_design_passes_the_schema_and_the_test_driver(tmp_path):
    xml = design(level_policy("qemu", frozenset({"vaes"})))
    path = tmp_path / "lvl.xml"
    path.write_text(xml)
    result = subprocess.run(["virt-xml-validate", str(path), "domain"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    with connection("test:///default") as conn:
        dom = conn.defineXML(xml)
        try:
            assert etree.fromstring(dom.XMLDesc(0).encode()).findtext("cpu/model") == "EPYC"
        finally:
            dom.undefine()


def test_level_store_round_trips_in_the_clusters_state(tmp_path):
    state = sqlite_state(tmp_path)
    store = StateCpuLevelStore(state)
    assert store.load() is None
    level = CpuLevel(cpu.parse_cpu_xml(BASELINE), "baseline", 1.5)
    store.save(level)
    assert StateCpuLevelStore(sqlite_state(tmp_path)).load() == level
    state.put("cpu", {"model": 7})
    with pytest.raises(InvalidSpec):
        store.load()
