"""Did a plan do what it predicted? Predicted vs observed utilization after it ran (pure).

The plan's ``predicted`` utilization (per host, from smoothed demand) is compared with
what the hosts show after the moves (a fresh snapshot's smoothed demand, or the stats'
host CPU). The report gives per-host errors, their mean, and whether every hotspot the
plan meant to relieve is in fact below its threshold now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ahvlite.errors import InvalidSpec
from ahvlite.sched.hotspot import Utilization, utilization
from ahvlite.sched.instance import Loads, build
from ahvlite.sched.model import Problem


@dataclass(frozen=True)
class HostEffect:
    host: str
    predicted_cpu_pct: float
    observed_cpu_pct: float
    error_pct: float  # observed - predicted, in points of the host's capacity

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Effectiveness:
    hosts: tuple[HostEffect, ...]
    mean_abs_error_pct: float
    max_abs_error_pct: float
    relieved: tuple[str, ...]  # CPU hotspots of the plan now at or below their threshold
    still_hot: tuple[str, ...]  # CPU hotspots of the plan still above it
    unknown: tuple[str, ...]  # CPU hotspots with no observation now (gone, not answering)
    threshold_pct: dict[str, float]  # hotspot -> the threshold the plan judged it by

    def to_dict(self) -> dict[str, Any]:
        return {"hosts": [h.to_dict() for h in self.hosts],
                "mean_abs_error_pct": self.mean_abs_error_pct,
                "max_abs_error_pct": self.max_abs_error_pct,
                "relieved": list(self.relieved), "still_hot": list(self.still_hot),
                "unknown": list(self.unknown), "threshold_pct": dict(self.threshold_pct)}


def compare(plan: Mapping[str, Any], observed_cpu_pct: Mapping[str, float], *,
            threshold_pct: float = 85.0) -> Effectiveness:
    """``plan`` as :meth:`Plan.to_dict` gives it; ``observed_cpu_pct``: host -> CPU %.

    Each hotspot is judged by the threshold the plan used for it (its own
    ``threshold_pct``), not today's setting; ``threshold_pct`` here is only the
    fallback for a hotspot record without one."""
    predicted = plan.get("predicted")
    if not isinstance(predicted, Mapping):
        raise InvalidSpec("plan.predicted", predicted, "the per-host prediction of a plan "
                          "(`ahvlite ads plan --json` output)")
    rows = []
    for host in sorted(predicted):
        if host not in observed_cpu_pct:
            continue  # a host gone since: nothing to compare
        p = float(predicted[host]["cpu_pct"])
        o = float(observed_cpu_pct[host])
        rows.append(HostEffect(host, p, round(o, 2), round(o - p, 2)))
    errors = [abs(r.error_pct) for r in rows]
    limits: dict[str, float] = {}
    for h in plan.get("hotspots", []):
        if h.get("resource") == "cpu":
            limits[h["host"]] = float(h.get("threshold_pct", threshold_pct))
    hot = sorted(limits)
    # A host not observed now is neither relieved nor still hot: we do not know.
    unknown = tuple(h for h in hot if h not in observed_cpu_pct)
    relieved = tuple(h for h in hot if h in observed_cpu_pct
                     and float(observed_cpu_pct[h]) <= limits[h])
    still = tuple(h for h in hot if h in observed_cpu_pct and h not in relieved)
    return Effectiveness(tuple(rows), round(sum(errors) / len(errors), 2) if errors else 0.0,
                         round(max(errors), 2) if errors else 0.0, relieved, still, unknown,
                         limits)


def observe(problem: Problem) -> dict[str, Utilization]:
    """Utilization of each host as the cluster is (smoothed demand, no moves)."""
    return utilization(Loads(build(problem)))
