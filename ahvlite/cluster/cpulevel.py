"""The cluster CPU level (like AHV's processor compatibility): one guest CPU every host
can run, so any VM can live-migrate to any host.

The level is cluster state behind :class:`CpuLevelStore`; today a JSON file next to
the cluster file, later the controller store.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ahvlite.cluster import vms
from ahvlite.cluster.inventory import parallel
from ahvlite.errors import Conflict, HostUnreachable, InvalidSpec
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.virt import cpu, designer, domains
from ahvlite.virt.conn import Connection
from ahvlite.virt.cpu import Comparison, CpuDef, HypervisorTarget
from ahvlite.virt.xml.domain import Domain

LEVEL_FILE = "cluster-cpu.json"


@dataclass(frozen=True)
class CpuLevel:
    cpu: CpuDef
    source: str  # baseline | manual
    set_at: float  # Unix time

    def to_dict(self) -> dict[str, Any]:
        return {**self.cpu.to_dict(), "source": self.source, "set_at": self.set_at}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CpuLevel:
        return cls(CpuDef(model=raw["model"], vendor=raw.get("vendor"),
                          features=tuple(raw.get("features", ())),
                          disabled=tuple(raw.get("disabled", ()))),
                   source=raw.get("source", "baseline"), set_at=float(raw.get("set_at", 0)))


class CpuLevelStore(Protocol):
    """Where the cluster keeps its CPU level."""

    def load(self) -> CpuLevel | None: ...

    def save(self, level: CpuLevel) -> None: ...


class FileCpuLevelStore:
    """The level as JSON next to the cluster file, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> CpuLevel | None:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InvalidSpec("cluster CPU level", str(self.path),
                              f"JSON with model and features ({exc})",
                              hint="`ahvlite cluster cpu apply` writes it anew") from None
        return CpuLevel.from_dict(raw)

    def save(self, level: CpuLevel) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(level.to_dict(), indent=2) + "\n")
        os.replace(tmp, self.path)


def store_for(cluster_file: Path) -> FileCpuLevelStore:
    return FileCpuLevelStore(cluster_file.with_name(LEVEL_FILE))


# -- per-host CPUs ------------------------------------------------------------------

@dataclass(frozen=True)
class HostCpu:
    name: str
    target: HypervisorTarget
    host_model: CpuDef
    usable_models: list[str] = field(default_factory=list)


def _domain_type(cluster: ClusterSpec, host: str) -> str:
    return vms.host_policy_domain_type(cluster.host(host))


def host_cpu(cluster: ClusterSpec, name: str, conn: Connection) -> HostCpu:
    caps = cpu.domain_capabilities(conn, _domain_type(cluster, name))
    model = cpu.host_model_of(caps)
    if model is None:
        raise HostUnreachable(f"host {name} reports no host-model CPU",
                              hint="is QEMU installed and working on that host?")
    return HostCpu(name, cpu.target_of(caps), model, cpu.usable_models(caps))


def _all_host_cpus(hosts: vms.Hosts) -> list[HostCpu]:
    if hosts.errors:
        raise HostUnreachable("the CPU level needs every host: "
                              + "; ".join(f"{h}: {e}" for h, e in hosts.errors.items()),
                              hint="bring the host back or remove it from the cluster")
    names = [h.name for h in hosts.cluster.hosts]
    return parallel(lambda n: host_cpu(hosts.cluster, n, hosts.conns[n]), names)


def _check_one_vendor(cpus: list[HostCpu]) -> None:
    vendors = {c.host_model.vendor for c in cpus if c.host_model.vendor}
    if len(vendors) > 1:
        by = "; ".join(f"{c.name}: {c.host_model.vendor}" for c in cpus)
        raise Conflict(f"the cluster mixes CPU vendors ({by}); live migration between "
                       "Intel and AMD processors is impossible, so no common level exists",
                       hint="keep one vendor per cluster")


def _baseline(hosts: vms.Hosts, cpus: list[HostCpu]) -> CpuDef:
    _check_one_vendor(cpus)
    first = cpus[0]
    return cpu.baseline_cpu(hosts.conns[first.name], first.target,
                            [c.host_model for c in cpus])


def given_up(cpus: list[HostCpu], level: CpuDef) -> dict[str, list[str]]:
    """Per host, the features its host-model has that the level does not."""
    base = cpu.expanded(level, cpu.model_features(level.model))
    return {c.name: cpu.features_given_up(
        cpu.expanded(c.host_model, cpu.model_features(c.host_model.model)), base)
        for c in cpus}


def show(cluster: ClusterSpec, store: CpuLevelStore) -> dict[str, Any]:
    """Each host's CPU, the computed baseline, the stored level, what hosts give up."""
    t0 = time.monotonic()
    with vms.connect(cluster) as hosts:
        cpus = _all_host_cpus(hosts)
        baseline = _baseline(hosts, cpus)
    took = time.monotonic() - t0
    level = store.load()
    effective = level.cpu if level else baseline
    return {
        "hosts": [{"name": c.name, "model": c.host_model.model,
                   "vendor": c.host_model.vendor, "domain_type": c.target.domain_type,
                   "machine": c.target.machine, "features": list(c.host_model.features),
                   "disabled": list(c.host_model.disabled)} for c in cpus],
        "baseline": baseline.to_dict(),
        "level": level.to_dict() if level else None,
        "given_up": given_up(cpus, effective),
        "took_s": round(took, 3),
    }


def apply(cluster: ClusterSpec, store: CpuLevelStore, *,
          recompute: bool = False) -> dict[str, Any]:
    """Store the baseline as the level (a manual level stays unless ``recompute``) and
    redefine every VM's CPU to it."""
    with vms.connect(cluster) as hosts:
        cpus = _all_host_cpus(hosts)
        level = store.load()
        if level is None or level.source != "manual" or recompute:
            level = CpuLevel(_baseline(hosts, cpus), "baseline", time.time())
            store.save(level)
        changed, next_cycle = [], []
        for conn in hosts.conns.values():
            for dom in domains.all_domains(conn):
                d = Domain.parse(domains.domain_xml(dom, inactive=True))
                before = d.to_xml()
                policy = vms.level_policy(conn, d.type or "kvm", level.cpu)
                designer.cpu_element(d, policy, d.vcpus or 1)
                if d.to_xml() == before:
                    continue
                domains.define_domain(conn, d.to_xml())
                changed.append(d.name or "")
                if domains.domain_state(dom) in domains.ACTIVE_STATES:
                    next_cycle.append(d.name or "")
    return {"level": level.to_dict(), "redefined": sorted(changed),
            "next_power_cycle": sorted(next_cycle)}


def set_level(cluster: ClusterSpec, store: CpuLevelStore, model: str) -> dict[str, Any]:
    """A manual level: ``model`` with its own features; refused if a host cannot run it."""
    wanted = CpuDef(model=model)
    with vms.connect(cluster) as hosts:
        cpus = _all_host_cpus(hosts)
        _check_one_vendor(cpus)
        results = {c.name: _compare(hosts, c, wanted) for c in cpus}
    bad = {h: r for h, r in results.items() if not r.compatible}
    if bad:
        why = "; ".join(f"{h} lacks {', '.join(r.missing) or r.message}"
                        for h, r in bad.items())
        raise Conflict(f"CPU model {model} cannot run on every host: {why}",
                       hint="`ahvlite cluster cpu show` lists the hosts' models and the "
                            "baseline; pick an older model")
    level = CpuLevel(wanted, "manual", time.time())
    store.save(level)
    return {"level": level.to_dict(),
            "hosts": {h: asdict(r) for h, r in results.items()}}


def _compare(hosts: vms.Hosts, c: HostCpu, wanted: CpuDef) -> Comparison:
    if c.usable_models and wanted.model not in c.usable_models and not wanted.features:
        # compareHypervisorCPU of a bare model checks the model's features against the
        # host; the domain capabilities also know which models the emulator runs.
        known = cpu.model_features(wanted.model)
        if not known:
            raise InvalidSpec("model", wanted.model, "a libvirt CPU model name (see "
                              "/usr/share/libvirt/cpu_map or `virsh cpu-models x86_64`)")
    return cpu.compare_cpu(hosts.conns[c.name], c.target, wanted)


def check_vm(cluster: ClusterSpec, name: str) -> dict[str, Any]:
    """Which hosts can run VM ``name``'s CPU, and what the others lack."""
    with vms.connect(cluster) as hosts:
        where, dom = hosts.find(name)
        d = Domain.parse(domains.domain_xml(dom, inactive=True))
        if d.cpu is None or not d.cpu.model:
            raise InvalidSpec("vm", name, "a VM with a named CPU model (mode custom)")
        vm_cpu = cpu.parse_cpu(d.cpu.el)
        cpus = _all_host_cpus(hosts)
        results = {c.name: _compare(hosts, c, vm_cpu) for c in cpus}
    return {"name": name, "host": where, "cpu": vm_cpu.to_dict(),
            "hosts": {h: asdict(r) for h, r in results.items()},
            "can_run_on": sorted(h for h, r in results.items() if r.compatible)}
