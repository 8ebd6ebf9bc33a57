"""ADS on the live cluster for the API and task kinds: the snapshot (each host's own
published stats, sampled here only for hosts whose controller publishes none), a plan
with the caller's solver options, and how well the last plan that moved VMs did."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from ahvlite.clock import SYSTEM, Clock
from ahvlite.errors import NotFound
from ahvlite.spec.cluster import ClusterSpec

# A published record older than this counts as none: that host's controller is gone.
STATS_MAX_AGE_S = 120.0


def live_problem(cluster: ClusterSpec, *, sample_s: float = 1.0,
                 cpu_threshold: float | None = None, storage_threshold: float | None = None,
                 move_penalty: int | None = None) -> Any:
    """The cluster now as ADS input, with the caller's thresholds and move penalty."""
    from ahvlite.cluster.adsinput import snapshot, stored_records

    records = stored_records(cluster.state.store, max_age_s=STATS_MAX_AGE_S)
    problem = snapshot(cluster, records=records, sample_s=sample_s, sample_missing=True)
    th = problem.thresholds
    th = replace(th, cpu_pct=th.cpu_pct if cpu_threshold is None else cpu_threshold,
                 storage_pct=th.storage_pct if storage_threshold is None
                 else storage_threshold)
    return replace(problem, thresholds=th, move_penalty_mib=problem.move_penalty_mib
                   if move_penalty is None else move_penalty)


def plan(problem: Any, *, solver: str = "auto", time_limit_s: float = 5.0) -> Any:
    from ahvlite.sched.plan import make_plan

    return make_plan(problem, solver=solver, time_limit_s=time_limit_s)  # type: ignore[arg-type]


def last_plan(cluster: ClusterSpec) -> dict[str, Any] | None:
    """The newest plan that ran: the leader's ADS round that moved VMs, or the last
    ``ads run``, whichever is newer."""
    from ahvlite.cluster.adsinput import LAST_RUN_KEY
    from ahvlite.controller.adsservice import LAST_MOVING_KEY

    found: list[tuple[float, dict[str, Any]]] = []
    got = cluster.state.store.get(LAST_MOVING_KEY)
    if got is not None:
        try:
            rec = json.loads(got.value)
        except (ValueError, UnicodeDecodeError):
            rec = None
        if isinstance(rec, dict):
            found.append((_at(rec), rec))
    run = cluster.state.get(LAST_RUN_KEY)
    if isinstance(run.get("plan"), dict):
        found.append((_at(run), run["plan"]))
    return max(found, key=lambda f: f[0])[1] if found else None


def _at(rec: dict[str, Any]) -> float:
    at = rec.get("at")
    return float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0


def effectiveness(cluster: ClusterSpec, *, sample_s: float = 1.0) -> dict[str, Any]:
    """Predicted (by the last plan) vs observed CPU utilization of each host now."""
    from ahvlite.sched.effectiveness import compare, observe

    last = last_plan(cluster)
    if not last:
        raise NotFound("no ADS run recorded for this cluster",
                       hint="`ahvlite ads run` first (or let the controller's ADS run)")
    observed = {h: u.cpu_pct for h, u in observe(live_problem(cluster,
                                                              sample_s=sample_s)).items()}
    # Each hotspot is judged by the threshold its plan used, not today's setting.
    return dict(compare(last, observed).to_dict())


def record_run(cluster: ClusterSpec, planned: dict[str, Any],
               migrations: list[dict[str, Any]], error: Any, *,
               clock: Clock = SYSTEM) -> dict[str, Any]:
    from ahvlite.cluster.adsinput import LAST_RUN_KEY

    record = {"at": clock.time(), "plan": planned, "migrations": migrations,
              "error": error}
    cluster.state.put(LAST_RUN_KEY, record)
    return record

