"""Initial placement at power-on, under the same rules as the planner (pure).

The cluster as the ranking sees it (:func:`power_on_problem`): each host's memory in
use (plus what this round already promised) as one immovable load, its CPU load when it
was sampled (all vCPUs of its running VMs busy: placement balances what is allocated),
and the names of the VMs running there, for anti-affinity.

Hosts the VM may not use are excluded with the reason (not schedulable, outside its
"must" hosts, a member of its anti-affinity group already there, too little memory).
The rest are ranked: hosts that stay under their CPU/storage thresholds with the VM
first, then hosts its "should" rules prefer, then the lowest CPU utilization after
placing it (this is where placement balances), then the most free memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ahvlite.errors import Conflict
from ahvlite.sched.capacity import HostCapacity
from ahvlite.sched.demand import estimate
from ahvlite.sched.instance import EPS, Loads, build
from ahvlite.sched.model import Host, Problem, Rules, Vm

MEMORY_REASON = "memory"


@dataclass(frozen=True)
class HostLoad:
    """What a host runs now, as sampled: its CPUs and its running VMs (name, vCPUs)."""

    cpus: int
    running: tuple[tuple[str, int], ...] = ()


def power_on_problem(hosts: Sequence[HostCapacity], rules: Rules, *,
                     loads: Mapping[str, HostLoad | None] | None = None,
                     closed: frozenset[str] = frozenset(),
                     pending_mib: Mapping[str, int] | None = None,
                     placed: Mapping[str, str] | None = None,
                     skip: str | None = None) -> Problem:
    """The Problem :func:`rank` reads. A host without a load (none sampled, or not
    answering) is placed by memory and rules alone. ``placed``: VM -> host of VMs that
    run (or are about to) elsewhere than the loads show; ``skip``: the VM being placed."""
    loads = loads or {}
    pending = pending_mib or {}
    host_list, vm_list = [], []
    names: dict[str, str] = {}
    for h in hosts:
        schedulable = h.reachable and h.name not in closed
        load = loads.get(h.name) if h.reachable else None
        used = max(h.total_mib - h.free_mib + pending.get(h.name, 0), 0)
        if load is None:
            host_list.append(Host(h.name, 100.0, max(h.total_mib, 1), schedulable=schedulable))
            if h.reachable:
                vm_list.append(Vm(f"(load of {h.name})", h.name, used, (), pinned=True))
            continue
        host_list.append(Host(h.name, max(load.cpus, 1) * 100.0, max(h.total_mib, 1),
                              schedulable=schedulable))
        # What the host holds now, as one immovable load; the real VMs (no load of
        # their own) are there for anti-affinity by name.
        vm_list.append(Vm(f"(load of {h.name})", h.name, used,
                          (100.0 * sum(v or 1 for _, v in load.running),), pinned=True))
        for name, _ in load.running:
            names.setdefault(name, h.name)  # mid-migration a VM shows on two hosts
    for name, host in (placed or {}).items():
        names.setdefault(name, host)
    known = {h.name for h in hosts}
    vm_list += [Vm(name, host, 0, pinned=True) for name, host in sorted(names.items())
                if host in known and name != skip]
    return Problem(tuple(host_list), tuple(vm_list), rules)


@dataclass(frozen=True)
class Placement:
    host: str | None
    ranked: tuple[str, ...]
    excluded: dict[str, str] = field(default_factory=dict)  # host -> why not
    predicted_cpu_pct: float | None = None  # of the chosen host's capacity, with the VM
    warnings: tuple[str, ...] = ()  # rules naming hosts that are gone (ignored)

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "ranked": list(self.ranked), "excluded": self.excluded,
                "predicted_cpu_pct": self.predicted_cpu_pct, "warnings": list(self.warnings)}

    @property
    def only_memory_short(self) -> bool:
        """No host, and memory (not a rule) is what excluded every one."""
        return self.host is None and all(r.startswith(MEMORY_REASON)
                                         for r in self.excluded.values())


def rank(problem: Problem, vm: Vm, *, need_free_mib: int | None = None) -> Placement:
    """Where ``vm`` (not yet running; its ``host`` is ignored) should start."""
    inst = build(problem)
    loads = Loads(inst)
    need = vm.memory_mib if need_free_mib is None else need_free_mib
    cpu = estimate(vm.cpu_history_pct)
    sto = estimate(vm.storage_history_pct)
    must: set[str] | None = None
    should: set[str] | None = None
    warnings = problem.rule_warnings()
    for r in problem.live_rules().host_affinity:  # hosts gone since are left out
        if vm.name in r.vms:
            if r.kind == "must":
                must = set(r.hosts) if must is None else must & set(r.hosts)
            else:
                should = set(r.hosts) if should is None else should & set(r.hosts)
    peers = {n for g in problem.rules.anti_affinity if vm.name in g.vms for n in g.vms
             if n != vm.name}
    peer_hosts = {v.host: v.name for v in problem.vms if v.name in peers}
    excluded: dict[str, str] = {}
    keys = []
    for h, name in enumerate(inst.host_names):
        free = inst.mem_cap[h] - loads.mem[h]
        if not inst.schedulable[h]:
            excluded[name] = "not schedulable (maintenance or not answering)"
        elif must is not None and name not in must:
            excluded[name] = "outside the VM's must-affinity hosts"
        elif name in peer_hosts:
            excluded[name] = f"anti-affinity: {peer_hosts[name]} runs there"
        elif free < need:
            excluded[name] = f"{MEMORY_REASON}: {free} MiB free, {need} MiB needed"
        else:
            ratio = (loads.cpu[h] + cpu) / inst.cpu_limit[h] if inst.cpu_limit[h] else 0.0
            lim = inst.sto_limit[h]
            cool = ratio <= 1 + EPS and (lim is None or loads.sto[h] + sto <= lim + EPS)
            preferred = should is None or name in should
            keys.append(((not cool, not preferred, round(ratio, 6), -free, name), h))
    keys.sort()
    ranked = tuple(inst.host_names[h] for _, h in keys)
    if not ranked:
        return Placement(None, (), excluded, warnings=warnings)
    best = keys[0][1]
    pct = round(100 * (loads.cpu[best] + cpu) / inst.cpu_capacity[best], 2)
    return Placement(ranked[0], ranked, excluded, pct, warnings)


def place_vm(problem: Problem, vm: Vm, *, need_free_mib: int | None = None) -> str:
    """The host for ``vm``, or Conflict naming why each host was excluded."""
    p = rank(problem, vm, need_free_mib=need_free_mib)
    if p.host is None:
        why = "; ".join(f"{h}: {r}" for h, r in sorted(p.excluded.items()))
        raise Conflict(f"no host can start {vm.name} ({why})",
                       hint="free memory, or change the VM's affinity rules "
                            "(`ahvlite ads rules list`)")
    return p.host
