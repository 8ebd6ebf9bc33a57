"""CPU models through libvirt: a host's host-model CPU, the baseline of several hosts,
and whether a CPU runs on a host.

Parsing and feature arithmetic are pure (strings in, plain data out) and tested on
recorded XML; the functions that take a connection only fetch and hand over strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree

from ahvlite.virt.conn import libvirt_errors
from ahvlite.virt.xml.domain import Domain

CPU_MAP_DIR = Path("/usr/share/libvirt/cpu_map")
# The machine type our VMs use (designer.machine_for); domain capabilities depend on it.
DEFAULT_MACHINE = "q35"


@dataclass(frozen=True)
class CpuDef:
    """A named CPU model plus required and disabled features (a guest CPU)."""

    model: str
    vendor: str | None = None
    features: tuple[str, ...] = ()  # policy require
    disabled: tuple[str, ...] = ()  # policy disable

    def to_xml(self) -> str:
        """As ``<cpu mode='custom' match='exact'>``: what baseline/compare accept."""
        cpu = etree.Element("cpu", mode="custom", match="exact")
        model = etree.SubElement(cpu, "model", fallback="forbid")
        model.text = self.model
        if self.vendor:
            etree.SubElement(cpu, "vendor").text = self.vendor
        for name in self.features:
            etree.SubElement(cpu, "feature", policy="require", name=name)
        for name in self.disabled:
            etree.SubElement(cpu, "feature", policy="disable", name=name)
        return etree.tostring(cpu, encoding="unicode")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "vendor": self.vendor, "features": list(self.features),
                "disabled": list(self.disabled)}


@dataclass(frozen=True)
class HypervisorTarget:
    """What baseline and compare are computed for: one emulator, arch, machine, type."""

    emulator: str | None
    arch: str
    machine: str | None
    domain_type: str


@dataclass(frozen=True)
class Comparison:
    compatible: bool
    result: str  # identical | superset | incompatible
    missing: list[str] = field(default_factory=list)  # features the host lacks
    message: str | None = None


# The x86-64 psABI microarchitecture levels as a vendor-neutral libvirt model plus the
# features each level adds (lzcnt is libvirt's "abm"; osxsave is the OS's, not settable).
# kvm64 already has the v1 set (cmov cx8 fpu fxsr mmx syscall sse sse2 lm) and cx16, pni.
_V2 = ("lahf_lm", "popcnt", "sse4.1", "sse4.2", "ssse3")
_V3 = (*_V2, "abm", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave")
_V4 = (*_V3, "avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl")
MICROARCH_LEVELS = {"x86-64-v2": _V2, "x86-64-v3": _V3, "x86-64-v4": _V4}
MICROARCH_BASE_MODEL = "kvm64"


def microarch_level(name: str) -> CpuDef | None:
    """``x86-64-v2/v3/v4`` as kvm64 plus the level's features; None for other names."""
    feats = MICROARCH_LEVELS.get(name)
    if feats is None:
        return None
    return CpuDef(model=MICROARCH_BASE_MODEL, features=tuple(sorted(feats)))


def parse_cpu(el: etree._Element) -> CpuDef:
    """A ``<cpu>`` (or domain capabilities ``<mode name='host-model'>``) element."""
    feats = [(f.get("policy") or "require", f.get("name", "")) for f in el.findall("feature")]
    return CpuDef(model=el.findtext("model") or "",
                  vendor=el.findtext("vendor") or None,
                  features=tuple(sorted(n for p, n in feats if p in ("require", "force"))),
                  disabled=tuple(sorted(n for p, n in feats if p in ("disable", "forbid"))))


def domain_cpu(d: Domain) -> CpuDef | None:
    """The guest CPU of a domain definition, None when it names no model."""
    if d.cpu is None or not d.cpu.model:
        return None
    return parse_cpu(d.cpu.el)


def parse_cpu_xml(xml: str) -> CpuDef:
    return parse_cpu(etree.fromstring(xml.encode()))


def host_model_of(domcaps_xml: str) -> CpuDef | None:
    """The host-model CPU in domain capabilities (None if that mode is unsupported)."""
    root = etree.fromstring(domcaps_xml.encode())
    mode = root.find("cpu/mode[@name='host-model']")
    if mode is None or mode.get("supported") != "yes":
        return None
    return parse_cpu(mode)


def target_of(domcaps_xml: str) -> HypervisorTarget:
    root = etree.fromstring(domcaps_xml.encode())
    return HypervisorTarget(emulator=root.findtext("path"), arch=root.findtext("arch") or "",
                            machine=root.findtext("machine"),
                            domain_type=root.findtext("domain") or "")


def usable_models(domcaps_xml: str) -> list[str]:
    root = etree.fromstring(domcaps_xml.encode())
    return [m.text or "" for m in root.findall("cpu/mode[@name='custom']/model")
            if m.get("usable") == "yes"]


_MISSING = re.compile(r"does not provide required features: ([^;\n]+)")


def missing_from_message(message: str) -> list[str]:
    """The features libvirt names in a failed comparison ("... required features: a, b")."""
    m = _MISSING.search(message)
    return sorted(f.strip() for f in m.group(1).split(",")) if m else []


def model_features(model: str, cpu_map_dir: Path = CPU_MAP_DIR) -> frozenset[str]:
    """Features a named x86 model has in libvirt's own CPU map (empty if unknown)."""
    path = cpu_map_dir / f"x86_{model}.xml"
    if not path.is_file():
        return frozenset()
    root = etree.fromstring(path.read_bytes())
    return frozenset(f.get("name", "") for f in root.findall(f"model[@name='{model}']/feature"))


def expanded(cpu: CpuDef, model_feats: frozenset[str]) -> frozenset[str]:
    """Every feature ``cpu`` gives a guest: its model's, plus required, minus disabled."""
    return (model_feats | frozenset(cpu.features)) - frozenset(cpu.disabled)


def features_given_up(host: frozenset[str], baseline: frozenset[str]) -> list[str]:
    """What a host could give a guest that the baseline does not (both expanded)."""
    return sorted(host - baseline)


def compare_features(wanted: frozenset[str], host: frozenset[str]) -> Comparison:
    """Whether a host with ``host`` features runs a CPU needing ``wanted`` (both fully
    expanded, e.g. by :func:`features_from_cpu_map`): the offline twin of
    :func:`compare_cpu` for recorded CPUs of machines not at hand."""
    missing = sorted(wanted - host)
    if missing:
        return Comparison(False, "incompatible", missing)
    return Comparison(True, "identical" if wanted == host else "superset")


def host_cpu_xml(cpu: CpuDef, arch: str = "x86_64") -> str:
    """``cpu`` as a host CPU (what ``virConnectBaselineCPU`` takes: an arch, no mode,
    no policies); disabled features are left out."""
    el = etree.Element("cpu")
    etree.SubElement(el, "arch").text = arch
    etree.SubElement(el, "model").text = cpu.model
    if cpu.vendor:
        etree.SubElement(el, "vendor").text = cpu.vendor
    for name in cpu.features:
        etree.SubElement(el, "feature", name=name)
    return etree.tostring(el, encoding="unicode")


# -- libvirt ------------------------------------------------------------------------

def domain_capabilities(conn: libvirt.virConnect, domain_type: str, *, arch: str = "x86_64",
                        machine: str | None = DEFAULT_MACHINE) -> str:
    with libvirt_errors(f"domain capabilities ({domain_type}, {arch}, {machine})"):
        return str(conn.getDomainCapabilities(None, arch, machine, domain_type, 0))


def baseline_cpu(conn: libvirt.virConnect, target: HypervisorTarget,
                 cpus: list[CpuDef]) -> CpuDef:
    """libvirt's baseline of ``cpus`` (migratable features only) for ``target``."""
    with libvirt_errors("CPU baseline"):
        xml = conn.baselineHypervisorCPU(target.emulator, target.arch, target.machine,
                                         target.domain_type, [c.to_xml() for c in cpus],
                                         libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE)
    return parse_cpu_xml(xml)


def baseline_from_cpu_map(conn: libvirt.virConnect, cpus: list[CpuDef],
                          arch: str = "x86_64") -> CpuDef:
    """libvirt's baseline of ``cpus`` from its CPU map alone (``virConnectBaselineCPU``).

    Unlike :func:`baseline_cpu` it needs no hypervisor, so it works on any connection,
    ``test:///default`` included: recorded host CPUs of other machines are baselined for
    real. Different vendors fail inside libvirt ("vendors do not match").
    """
    with libvirt_errors("CPU baseline from the CPU map"):
        xml = conn.baselineCPU([host_cpu_xml(c, arch) for c in cpus], 0)
    return parse_cpu_xml(xml)


def features_from_cpu_map(conn: libvirt.virConnect, cpu: CpuDef,
                          arch: str = "x86_64") -> frozenset[str]:
    """Every feature ``cpu`` has (its model's plus its own, minus disabled), expanded by
    libvirt from its CPU map; any connection, ``test:///default`` included."""
    with libvirt_errors(f"expand CPU {cpu.model}"):
        xml = conn.baselineCPU([host_cpu_xml(cpu, arch)],
                               libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES)
    return frozenset(parse_cpu_xml(xml).features) - frozenset(cpu.disabled)


_RESULTS = {libvirt.VIR_CPU_COMPARE_IDENTICAL: "identical",
            libvirt.VIR_CPU_COMPARE_SUPERSET: "superset",
            libvirt.VIR_CPU_COMPARE_INCOMPATIBLE: "incompatible"}


def compare_cpu(conn: libvirt.virConnect, target: HypervisorTarget, cpu: CpuDef) -> Comparison:
    """Can the host behind ``conn`` run ``cpu``; if not, which features it lacks."""
    try:
        code = conn.compareHypervisorCPU(target.emulator, target.arch, target.machine,
                                         target.domain_type, cpu.to_xml(),
                                         libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_CPU_INCOMPATIBLE:
            with libvirt_errors(f"compare CPU {cpu.model}"):
                raise
        message = exc.get_error_message() or str(exc)
        return Comparison(False, "incompatible", missing_from_message(message), message)
    result = _RESULTS.get(code, "incompatible")
    return Comparison(result != "incompatible", result)
