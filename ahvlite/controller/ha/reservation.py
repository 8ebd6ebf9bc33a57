"""Guarantee-mode capacity: host- and segment-based reservations, admission (pure).

The guarantee: after the loss of any ``f`` hosts (RF2: 1, RF3: 2) every protected VM
that ran on them can be restarted on the survivors.

* Host-based: the ``f`` hosts with the most memory are kept free of VMs. Each of them is
  at least as large as any other host, so whichever ``f`` hosts fail, every failed
  host's VMs fit into one surviving reserved host (with uneven hosts the largest host's
  memory is what counts). Simple and wasteful: whole hosts idle.
* Segment-based: the reservation is spread over all hosts. For every set ``F`` of
  ``f`` hosts that could fail, the protected VMs of ``F`` must pack (MTHM, see
  ``mthm.py``) into the reservations of the other hosts. Sizing starts from nothing
  and, while some failure set leaves a VM unpacked, reserves one more segment the size
  of the largest unpacked VM on the surviving host with the most headroom (memory
  neither used nor reserved). Segments are VM-sized, so the reservation follows the
  VM mix rather than the largest host. The result is verified by the packing itself:
  a reservation reported as sufficient is a concrete restart plan. If no host has
  headroom for a needed segment the guarantee cannot hold and the memory still
  missing is reported.

Admission control: powering on a VM in guarantee mode is refused when, with that VM
running, the reservation can no longer be made; the refusal says how much is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

from ahvlite.controller.ha.mthm import pack_memory
from ahvlite.controller.ha.settings import HaSettings


@dataclass(frozen=True)
class HostMem:
    name: str
    total_mib: int


@dataclass(frozen=True)
class VmLoad:
    """A running VM's memory on a host; ``protected`` ones must be restartable."""

    name: str
    host: str
    memory_mib: int
    protected: bool = True


@dataclass(frozen=True)
class Reservation:
    kind: str  # "none", "host" or "segment"
    per_host_mib: dict[str, int]
    ok: bool
    missing_mib: int = 0
    reserved_hosts: tuple[str, ...] = ()
    segments_mib: dict[str, tuple[int, ...]] = field(default_factory=dict)
    failover_needed_mib: int = 0  # protected memory of the worst f hosts together
    failover_capacity_mib: int = 0  # memory set aside (guarantee) or free (default)
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "per_host_mib": self.per_host_mib, "ok": self.ok,
                "missing_mib": self.missing_mib, "reserved_hosts": list(self.reserved_hosts),
                "segments_mib": {h: list(s) for h, s in self.segments_mib.items()},
                "failover_needed_mib": self.failover_needed_mib,
                "failover_capacity_mib": self.failover_capacity_mib, "detail": self.detail}


def loads(hosts: Sequence[HostMem], vms: Sequence[VmLoad]) -> dict[str, int]:
    out = {h.name: 0 for h in hosts}
    for v in vms:
        if v.host in out:
            out[v.host] += v.memory_mib
    return out


def protected_loads(hosts: Sequence[HostMem], vms: Sequence[VmLoad]) -> dict[str, int]:
    return loads(hosts, [v for v in vms if v.protected])


def worst_loss_mib(hosts: Sequence[HostMem], vms: Sequence[VmLoad], f: int) -> int:
    """Protected memory on the ``f`` most loaded hosts: what a worst loss must restart."""
    return sum(sorted(protected_loads(hosts, vms).values(), reverse=True)[:f])


def host_reservation(hosts: Sequence[HostMem], vms: Sequence[VmLoad], f: int) -> Reservation:
    used = loads(hosts, vms)
    needed = worst_loss_mib(hosts, vms, f)
    if len(hosts) <= f:
        # Vacuously kept when nothing is protected; otherwise all of it is missing.
        return Reservation("host", {h.name: 0 for h in hosts}, needed == 0, needed,
                           failover_needed_mib=needed,
                           detail=f"{len(hosts)} host(s) cannot survive the loss of {f}")
    reserved = sorted(hosts, key=lambda h: (-h.total_mib, h.name))[:f]
    names = tuple(h.name for h in reserved)
    on_reserved = sum(used[n] for n in names)
    per_host = {h.name: (h.total_mib if h.name in names else 0) for h in hosts}
    ok = on_reserved == 0
    detail = (f"{', '.join(names)} kept free" if ok else
              f"{on_reserved} MiB of VMs run on the reserved host(s) {', '.join(names)}")
    return Reservation("host", per_host, ok, on_reserved, reserved_hosts=names,
                       failover_needed_mib=needed,
                       failover_capacity_mib=sum(h.total_mib for h in reserved), detail=detail)


def segment_reservation(hosts: Sequence[HostMem], vms: Sequence[VmLoad],
                        f: int) -> Reservation:
    used = loads(hosts, vms)
    needed = worst_loss_mib(hosts, vms, f)
    names = [h.name for h in hosts]
    total = {h.name: h.total_mib for h in hosts}
    if len(hosts) <= f:
        return Reservation("segment", {n: 0 for n in names}, needed == 0, needed,
                           failover_needed_mib=needed,
                           detail=f"{len(hosts)} host(s) cannot survive the loss of {f}")
    items_of = {n: sorted((v.memory_mib for v in vms if v.protected and v.host == n),
                          reverse=True) for n in names}
    reserved = {n: 0 for n in names}
    segments: dict[str, list[int]] = {n: [] for n in names}
    missing = 0
    stuck: set[tuple[str, ...]] = set()
    changed = True
    while changed:
        changed = False
        for failed in combinations(names, f):
            if failed in stuck:
                continue
            items = [s for n in failed for s in items_of[n]]
            survivors = [n for n in names if n not in failed]
            packing = pack_memory(items, [reserved[n] for n in survivors])
            left = sorted((items[j] for j in packing.unassigned()), reverse=True)
            if not left:
                continue
            size = left[0]
            room = {n: total[n] - used[n] - reserved[n] for n in survivors}
            best = max(survivors, key=lambda n: (room[n], n))
            if room[best] < size:
                stuck.add(failed)
                missing = max(missing, sum(left))
                continue
            reserved[best] += size
            segments[best].append(size)
            changed = True
    ok = not stuck
    detail = ("every loss of " + ("1 host" if f == 1 else f"{f} hosts") + " fits"
              if ok else f"no room for {missing} MiB of protected VMs after a loss of "
              + ", ".join(sorted(stuck)[0]))
    return Reservation("segment", reserved, ok, missing,
                       segments_mib={n: tuple(s) for n, s in segments.items()},
                       failover_needed_mib=needed,
                       failover_capacity_mib=sum(reserved.values()), detail=detail)


def reservation(settings: HaSettings, hosts: Sequence[HostMem],
                vms: Sequence[VmLoad]) -> Reservation:
    """The reservation the settings ask for (default mode reserves nothing)."""
    f = settings.failures_tolerated
    if settings.mode == "default":
        used = loads(hosts, vms)
        free = {h.name: max(0, h.total_mib - used[h.name]) for h in hosts}
        return Reservation("none", {h.name: 0 for h in hosts}, True,
                           failover_needed_mib=worst_loss_mib(hosts, vms, f),
                           failover_capacity_mib=sum(free.values()),
                           detail="best effort: restarts use whatever memory is free")
    if settings.reservation == "host":
        return host_reservation(hosts, vms, f)
    return segment_reservation(hosts, vms, f)


@dataclass(frozen=True)
class Admission:
    ok: bool
    host: str | None
    missing_mib: int
    message: str


def admit(settings: HaSettings, hosts: Sequence[HostMem], vms: Sequence[VmLoad],
          candidate: VmLoad | None = None, *, name: str = "", memory_mib: int = 0,
          host: str | None = None, protected: bool = True) -> Admission:
    """May a VM be powered on (on ``host``, or on any host when None)?

    Pass ``candidate`` or ``name``/``memory_mib``/``host``. In default mode only the
    memory must fit; in guarantee mode the reservation must still hold with it running.
    """
    if candidate is not None:
        name, memory_mib, host, protected = (candidate.name, candidate.memory_mib,
                                             candidate.host, candidate.protected)
    used = loads(hosts, vms)
    total = {h.name: h.total_mib for h in hosts}
    order = [host] if host is not None else sorted(
        total, key=lambda n: (used[n] - total[n], n))
    best_missing: int | None = None
    reasons = []
    for target in order:
        if target not in total:
            reasons.append(f"{target} is not a host of the cluster")
            continue
        if used[target] + memory_mib > total[target]:
            short = used[target] + memory_mib - total[target]
            reasons.append(f"{target} has {total[target] - used[target]} MiB free")
            best_missing = short if best_missing is None else min(best_missing, short)
            continue
        if settings.mode == "default":
            return Admission(True, target, 0, f"{name} fits on {target}")
        res = reservation(settings, hosts, [*vms, VmLoad(name, target, memory_mib, protected)])
        if res.ok:
            return Admission(True, target, 0, f"{name} fits on {target} with the "
                             f"{res.kind} reservation intact")
        # Host-based: a VM on a reserved host must go elsewhere, all of its memory is
        # what is missing there.
        short = res.missing_mib
        reasons.append(f"on {target}: {res.detail}")
        best_missing = short if best_missing is None else min(best_missing, short)
    missing = best_missing or memory_mib
    where = f"on {host}" if host is not None else "on any host"
    return Admission(False, None, missing,
                     f"powering on {name} ({memory_mib} MiB) {where} would break the HA "
                     f"guarantee (RF{settings.rf}, {settings.reservation} reservation): "
                     f"{missing} MiB missing ({'; '.join(reasons)})")


def admit_moves(settings: HaSettings, hosts: Sequence[HostMem], vms: Sequence[VmLoad],
                moves: Sequence[tuple[str, str]]) -> Admission:
    """May these running VMs move (``(vm, destination)``)? In guarantee mode the
    reservation must still hold with every one of them on its destination; in default
    mode the destinations need the memory only."""
    by_name = {v.name: v for v in vms}
    moved = [VmLoad(v.name, dict(moves).get(v.name, v.host), v.memory_mib, v.protected)
             for v in vms]
    used = loads(hosts, moved)
    total = {h.name: h.total_mib for h in hosts}
    for vm, dest in moves:
        if dest in total and used[dest] > total[dest]:
            short = used[dest] - total[dest]
            return Admission(False, None, short, f"moving {vm} to {dest} does not fit: "
                             f"{short} MiB missing there")
    if settings.mode == "default":
        return Admission(True, None, 0, "fits")
    before = reservation(settings, hosts, vms)
    after = reservation(settings, hosts, moved)
    if after.ok or (not before.ok and after.missing_mib <= before.missing_mib):
        return Admission(True, None, 0, f"the {after.kind} reservation holds")
    what = ", ".join(f"{vm} to {dest} ({by_name[vm].memory_mib if vm in by_name else '?'}"
                     " MiB)" for vm, dest in moves)
    return Admission(False, None, after.missing_mib,
                     f"moving {what} would break the HA guarantee (RF{settings.rf}, "
                     f"{settings.reservation} reservation): {after.missing_mib} MiB missing "
                     f"({after.detail})")
