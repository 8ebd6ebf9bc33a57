"""A :class:`Problem` as indexed arrays the solvers share, and the mutable load state a
plan walks through step by step (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from ahvlite.sched.demand import estimate
from ahvlite.sched.model import Problem

# Loads within this much of a limit count as at it: float noise is not a hotspot.
EPS = 1e-6


@dataclass(frozen=True)
class Instance:
    problem: Problem
    host_names: tuple[str, ...]
    vm_names: tuple[str, ...]
    cpu: tuple[float, ...]  # per VM: smoothed CPU demand (pct of a core)
    storage: tuple[float, ...]  # per VM: smoothed storage-service CPU it causes
    mem: tuple[int, ...]  # per VM, MiB
    start: tuple[int, ...]  # per VM: index of its host now
    allowed: tuple[frozenset[int], ...]  # per VM: hosts it may be on at the end
    should: tuple[frozenset[int] | None, ...]  # per VM: preferred hosts (None: no rule)
    groups: tuple[tuple[int, ...], ...]  # anti-affinity groups as VM indices
    vm_groups: tuple[tuple[int, ...], ...]  # per VM: its groups
    group_init: tuple[dict[int, int], ...]  # per group: host -> members there now
    cpu_limit: tuple[float, ...]  # per host: threshold x capacity
    cpu_capacity: tuple[float, ...]
    sto_limit: tuple[float | None, ...]  # per host (None: no storage service watched)
    sto_alloc: tuple[float, ...]
    sto_base: tuple[float, ...]  # per host: the storage service's own smoothed load
    mem_cap: tuple[int, ...]
    schedulable: tuple[bool, ...]
    move_cost: tuple[int, ...]  # per VM: memory + per-move penalty
    should_penalty: int  # extra cost of moving a VM to a host outside its "should" set

    @property
    def n_hosts(self) -> int:
        return len(self.host_names)

    @property
    def n_vms(self) -> int:
        return len(self.vm_names)

    def movable(self, v: int) -> bool:
        return len(self.allowed[v]) > 1

    def group_cap(self, g: int, h: int) -> int:
        """How many of group ``g`` host ``h`` may hold: one, or the pair already there."""
        return max(1, self.group_init[g].get(h, 0))

    def dest_cost(self, v: int, h: int) -> int:
        """Cost of moving VM ``v`` to host ``h`` (0 when it is its host now)."""
        if h == self.start[v]:
            return 0
        extra = 0
        if self.should[v] is not None and h not in self.should[v]:  # type: ignore[operator]
            extra = self.should_penalty
        return self.move_cost[v] + extra


def build(problem: Problem) -> Instance:
    hosts = problem.hosts
    hidx = {h.name: i for i, h in enumerate(hosts)}
    vidx = {v.name: i for i, v in enumerate(problem.vms)}
    schedulable = tuple(h.schedulable for h in hosts)
    usable = frozenset(i for i, ok in enumerate(schedulable) if ok)
    must: dict[int, frozenset[int]] = {}
    should: dict[int, frozenset[int]] = {}
    for rule in problem.live_rules().host_affinity:  # hosts gone since are left out
        target = must if rule.kind == "must" else should
        hs = frozenset(hidx[h] for h in rule.hosts)
        for name in rule.vms:
            if name in vidx:
                v = vidx[name]
                # Two rules on one VM: it must satisfy both (intersection).
                target[v] = target[v] & hs if v in target else hs
    allowed, start = [], []
    for i, vm in enumerate(problem.vms):
        here = hidx[vm.host]
        start.append(here)
        if vm.pinned:
            allowed.append(frozenset({here}))
            continue
        # Staying is always allowed (ADS never moves a VM only to fix a rule); moving
        # is allowed to schedulable hosts the VM's "must" rules name.
        if i not in must and here in usable:
            allowed.append(usable)  # the common case: one shared set, not one per VM
        else:
            allowed.append((usable & must.get(i, usable)) | {here})
    groups: list[tuple[int, ...]] = []
    vm_groups_l: list[list[int]] = [[] for _ in problem.vms]
    group_init: list[dict[int, int]] = []
    for group in problem.rules.anti_affinity:
        members = tuple(vidx[n] for n in group.vms if n in vidx)
        if len(members) < 2:
            continue
        g = len(groups)
        groups.append(members)
        counts: dict[int, int] = {}
        for v in members:
            vm_groups_l[v].append(g)
            counts[start[v]] = counts.get(start[v], 0) + 1
        group_init.append(counts)
    th = problem.thresholds
    cpu = tuple(estimate(v.cpu_history_pct) for v in problem.vms)
    mem = tuple(v.memory_mib for v in problem.vms)
    return Instance(
        problem=problem, host_names=tuple(h.name for h in hosts),
        vm_names=tuple(v.name for v in problem.vms), cpu=cpu,
        storage=tuple(estimate(v.storage_history_pct) for v in problem.vms), mem=mem,
        start=tuple(start), allowed=tuple(allowed),
        should=tuple(should.get(i) for i in range(len(problem.vms))),
        groups=tuple(groups), vm_groups=tuple(tuple(g) for g in vm_groups_l),
        group_init=tuple(group_init),
        cpu_limit=tuple(h.cpu_capacity_pct * th.cpu_pct / 100 for h in hosts),
        cpu_capacity=tuple(h.cpu_capacity_pct for h in hosts),
        sto_limit=tuple(h.storage_cpu_alloc_pct * th.storage_pct / 100
                        if h.storage_cpu_alloc_pct > 0 else None for h in hosts),
        sto_alloc=tuple(h.storage_cpu_alloc_pct for h in hosts),
        sto_base=tuple(estimate(h.storage_cpu_history_pct) for h in hosts),
        mem_cap=tuple(h.memory_mib for h in hosts), schedulable=schedulable,
        move_cost=tuple(m + problem.move_penalty_mib for m in mem),
        should_penalty=problem.move_penalty_mib)


class Loads:
    """The cluster while a plan is applied: where each VM is and what each host carries."""

    def __init__(self, inst: Instance, placement: list[int] | None = None) -> None:
        self.inst = inst
        self.where = list(inst.start if placement is None else placement)
        n = inst.n_hosts
        self.cpu = [0.0] * n
        self.sto = list(inst.sto_base)
        self.mem = [0] * n
        self.on: list[set[int]] = [set() for _ in range(n)]
        self.group_count: list[dict[int, int]] = [{} for _ in inst.groups]
        for v, h in enumerate(self.where):
            self._add(v, h)

    def copy(self) -> Loads:
        other = Loads.__new__(Loads)
        other.inst = self.inst
        other.where = list(self.where)
        other.cpu, other.sto, other.mem = list(self.cpu), list(self.sto), list(self.mem)
        other.on = [set(s) for s in self.on]
        other.group_count = [dict(c) for c in self.group_count]
        return other

    def _add(self, v: int, h: int) -> None:
        i = self.inst
        self.cpu[h] += i.cpu[v]
        self.sto[h] += i.storage[v]
        self.mem[h] += i.mem[v]
        self.on[h].add(v)
        for g in i.vm_groups[v]:
            self.group_count[g][h] = self.group_count[g].get(h, 0) + 1

    def _remove(self, v: int, h: int) -> None:
        i = self.inst
        self.cpu[h] -= i.cpu[v]
        self.sto[h] -= i.storage[v]
        self.mem[h] -= i.mem[v]
        self.on[h].discard(v)
        for g in i.vm_groups[v]:
            self.group_count[g][h] -= 1

    def move(self, v: int, h: int) -> None:
        self._remove(v, self.where[v])
        self.where[v] = h
        self._add(v, h)

    def mem_fits(self, v: int, h: int) -> bool:
        return self.mem[h] + self.inst.mem[v] <= self.inst.mem_cap[h]

    def group_ok(self, v: int, h: int) -> bool:
        return all(self.group_count[g].get(h, 0) + 1 <= self.inst.group_cap(g, h)
                   for g in self.inst.vm_groups[v])

    def can_receive(self, v: int, h: int) -> bool:
        """May VM ``v`` move to ``h`` now (rules, schedulable, memory, anti-affinity)?"""
        return (h != self.where[v] and h in self.inst.allowed[v]
                and self.inst.schedulable[h] and self.mem_fits(v, h) and self.group_ok(v, h))

    def cpu_over(self, h: int) -> float:
        return max(0.0, self.cpu[h] - self.inst.cpu_limit[h])

    def sto_over(self, h: int) -> float:
        lim = self.inst.sto_limit[h]
        return 0.0 if lim is None else max(0.0, self.sto[h] - lim)

    def hot(self, h: int) -> bool:
        return self.cpu_over(h) > EPS or self.sto_over(h) > EPS

    def stays_cool(self, v: int, h: int) -> bool:
        """Would ``h`` stay within its thresholds with ``v`` added?"""
        i = self.inst
        if self.cpu[h] + i.cpu[v] > i.cpu_limit[h] + EPS:
            return False
        lim = i.sto_limit[h]
        return lim is None or self.sto[h] + i.storage[v] <= lim + EPS
