"""The cluster CPU level (like AHV's processor compatibility): one guest CPU every host
can run, so any VM can live-migrate to any host. Stored through
:mod:`ahvlite.cluster.cpustore`; computed here over the hosts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ahvlite.clock import SYSTEM
from ahvlite.cluster import vms
from ahvlite.cluster.cpustore import CpuLevel, CpuLevelStore
from ahvlite.cluster.inventory import parallel
from ahvlite.errors import Conflict, HostUnreachable, InvalidSpec
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.virt import cpu, designer, guest
from ahvlite.virt.conn import Connection
from ahvlite.virt.cpu import Comparison, CpuDef, HypervisorTarget

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
    if not hosts.cluster.hosts:
        raise InvalidSpec("hosts", [], "a cluster with at least one host for a CPU level",
                          hint="`ahvlite host add` one")
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
    t0 = SYSTEM.monotonic()
    with vms.connect(cluster) as hosts:
        cpus = _all_host_cpus(hosts)
        baseline = _baseline(hosts, cpus)
    took = SYSTEM.monotonic() - t0
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
            level = CpuLevel(_baseline(hosts, cpus), "baseline", SYSTEM.time())
            store.save(level)
        changed, next_cycle = [], []
        for conn in hosts.conns.values():
            for dom in guest.all_guests(conn):
                d = dom.config(inactive=True)
                before = d.to_xml()
                policy = vms.level_policy(conn, d.type or "kvm", level.cpu)
                designer.cpu_element(d, policy, d.vcpus or 1)
                if d.to_xml() == before:
                    continue
                guest.define(conn, d)
                changed.append(d.name or "")
                if dom.state() in guest.ACTIVE_STATES:
                    next_cycle.append(d.name or "")
    return {"level": level.to_dict(), "redefined": sorted(changed),
            "next_power_cycle": sorted(next_cycle)}


def set_level(cluster: ClusterSpec, store: CpuLevelStore, model: str) -> dict[str, Any]:
    """A manual level: a libvirt ``model`` with its own features, or ``x86-64-v2/v3/v4``
    (kvm64 plus the level's features); refused if a host cannot run it."""
    wanted = cpu.microarch_level(model) or CpuDef(model=model)
    if not wanted.features and not cpu.model_features(model):
        raise InvalidSpec("model", model, "a libvirt CPU model name or x86-64-v2/v3/v4 "
                          "(see /usr/share/libvirt/cpu_map or `virsh cpu-models x86_64`)")
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
    level = CpuLevel(wanted, "manual", SYSTEM.time(), name=model)
    store.save(level)
    return {"level": level.to_dict(),
            "hosts": {h: asdict(r) for h, r in results.items()}}


def _compare(hosts: vms.Hosts, c: HostCpu, wanted: CpuDef) -> Comparison:
    return cpu.compare_cpu(hosts.conns[c.name], c.target, wanted)


def check_vm(cluster: ClusterSpec, name: str) -> dict[str, Any]:
    """Which hosts can run VM ``name``'s CPU, and what the others lack."""
    with vms.connect(cluster) as hosts:
        where, dom = hosts.find(name)
        d = dom.config(inactive=True)
        vm_cpu = cpu.domain_cpu(d)
        if vm_cpu is None:
            raise InvalidSpec("vm", name, "a VM with a named CPU model (mode custom)")
        cpus = _all_host_cpus(hosts)
        results = {c.name: _compare(hosts, c, vm_cpu) for c in cpus}
    return {"name": name, "host": where, "cpu": vm_cpu.to_dict(),
            "hosts": {h: asdict(r) for h, r in results.items()},
            "can_run_on": sorted(h for h, r in results.items() if r.compatible)}


# -- adding a host --------------------------------------------------------------------

@dataclass(frozen=True)
class HostAddPlan:
    """What adding a host does to the level: nothing stored, keep it, or lower it."""

    host: str
    action: str  # none | keep | lower
    level: CpuDef | None  # the level after the add
    missing: list[str] = field(default_factory=list)  # of the old level, on the new host


def decide_host_add(host: str, level: CpuLevel | None, runs: Comparison | None,
                    lowered: CpuDef | None, *, strict: bool) -> HostAddPlan:
    """Pure: a host that runs the level keeps it (a newer host never raises it); one
    that cannot lowers it to the new baseline, or is refused with ``strict``."""
    if level is None:
        return HostAddPlan(host, "none", None)
    if runs is None or runs.compatible:
        return HostAddPlan(host, "keep", level.cpu)
    lacks = ", ".join(runs.missing) or (runs.message or "features")
    if strict:
        raise Conflict(f"host {host} cannot run the cluster CPU level {level.cpu.model} "
                       f"(it lacks {lacks}); --strict refuses to lower the level",
                       hint="add it without --strict to lower the level (running VMs "
                            "take it at their next power cycle), or use a newer host")
    if lowered is None:
        raise Conflict(f"host {host} cannot run the cluster CPU level {level.cpu.model} "
                       "and no lower level was computed")
    return HostAddPlan(host, "lower", lowered, list(runs.missing))


def plan_host_add(cluster: ClusterSpec, store: CpuLevelStore, new: HostSpec, *,
                  strict: bool = False) -> HostAddPlan:
    """Before ``new`` joins: can it run the stored level, and if not, the lower level
    over all hosts with it (refused with ``strict``, or when vendors would mix)."""
    return plan_hosts_add(cluster, store.load(), [new], strict=strict)


def plan_hosts_add(cluster: ClusterSpec, level: CpuLevel | None, new: list[HostSpec], *,
                   strict: bool = False) -> HostAddPlan:
    """:func:`plan_host_add` for several hosts joining ``cluster`` at once (``cluster
    apply``) against ``level``: each must run it, or the level drops to the baseline of
    every host (refused with ``strict``)."""
    names = ", ".join(h.name for h in new)
    if level is None or not new:
        return HostAddPlan(names, "none", None)
    joined = cluster.model_copy(update={"hosts": [*cluster.hosts, *new]})
    with vms.connect(joined) as hosts:
        cpus = _all_host_cpus(hosts)
        _check_one_vendor(cpus)
        runs = {}
        for h in new:
            mine = next(c for c in cpus if c.name == h.name)
            if level.cpu.vendor and mine.host_model.vendor not in (None, level.cpu.vendor):
                raise Conflict(f"host {h.name} has a {mine.host_model.vendor} CPU and the "
                               f"cluster CPU level is {level.cpu.vendor} ({level.cpu.model}); "
                               "live migration between Intel and AMD processors is "
                               "impossible", hint="keep one vendor per cluster")
            runs[h.name] = cpu.compare_cpu(hosts.conns[h.name], mine.target, level.cpu)
        lowered = (None if all(r.compatible for r in runs.values())
                   else _baseline(hosts, cpus))
        plans = [decide_host_add(n, level, r, lowered, strict=strict) for n, r in runs.items()]
    lower = [p for p in plans if p.action == "lower"]
    if not lower:
        return HostAddPlan(names, "keep", level.cpu)
    missing = sorted({m for p in lower for m in p.missing})
    return HostAddPlan(names, "lower", lower[0].level, missing)


def plan_to_dict(plan: HostAddPlan) -> dict[str, Any]:
    return {"host": plan.host, "action": plan.action, "missing": list(plan.missing),
            "level": plan.level.to_dict() if plan.level else None}


def plan_from_dict(raw: dict[str, Any]) -> HostAddPlan:
    """A plan recorded by :func:`plan_to_dict` (a task step's value)."""
    level = raw.get("level")
    return HostAddPlan(str(raw["host"]), str(raw["action"]),
                       CpuLevel.from_dict({**level, "source": "baseline"}).cpu
                       if level else None, [str(m) for m in raw.get("missing", [])])


def finish_host_add(cluster: ClusterSpec, store: CpuLevelStore,
                    plan: HostAddPlan) -> dict[str, Any]:
    """After the host joined: store a lowered level and redefine the VMs to it."""
    out: dict[str, Any] = {"action": plan.action, "missing": plan.missing,
                           "level": plan.level.to_dict() if plan.level else None,
                           "redefined": [], "next_power_cycle": []}
    if plan.action != "lower" or plan.level is None:
        return out
    store.save(CpuLevel(plan.level, "baseline", SYSTEM.time()))
    applied = apply(cluster, store)
    out.update(redefined=applied["redefined"], next_power_cycle=applied["next_power_cycle"])
    return out
