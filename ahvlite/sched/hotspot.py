"""Hotspots: hosts expected to be contended, and the utilization figures plans report.

A host is a hotspot when its smoothed CPU demand is above ``thresholds.cpu_pct`` of its
capacity, or its storage service's smoothed CPU demand is above ``thresholds.storage_pct``
of that service's allocation. Skew between hosts is not a hotspot: only contention is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from ahvlite.sched.instance import Instance, Loads

Resource = Literal["cpu", "storage"]


@dataclass(frozen=True)
class Hotspot:
    host: str
    resource: Resource
    demand_pct: float  # of the host's capacity (cpu) or the service's allocation
    threshold_pct: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Utilization:
    cpu_pct: float  # of capacity
    storage_pct: float | None  # of the storage service's allocation
    memory_pct: float
    memory_used_mib: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(x: float, of: float) -> float:
    return round(100 * x / of, 2) if of > 0 else 0.0


def hotspots(loads: Loads) -> list[Hotspot]:
    inst = loads.inst
    th = inst.problem.thresholds
    out = []
    for h, name in enumerate(inst.host_names):
        if loads.cpu_over(h) > 1e-6:
            out.append(Hotspot(name, "cpu", _pct(loads.cpu[h], inst.cpu_capacity[h]),
                               th.cpu_pct))
        if loads.sto_over(h) > 1e-6:
            out.append(Hotspot(name, "storage", _pct(loads.sto[h], inst.sto_alloc[h]),
                               th.storage_pct))
    return out


def utilization(loads: Loads) -> dict[str, Utilization]:
    inst = loads.inst
    return {name: Utilization(
        _pct(loads.cpu[h], inst.cpu_capacity[h]),
        _pct(loads.sto[h], inst.sto_alloc[h]) if inst.sto_limit[h] is not None else None,
        _pct(loads.mem[h], inst.mem_cap[h]), loads.mem[h])
        for h, name in enumerate(inst.host_names)}


def find(inst: Instance) -> list[Hotspot]:
    """Hotspots of the cluster as it is now."""
    return hotspots(Loads(inst))
