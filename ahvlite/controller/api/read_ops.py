"""Reads about operating the cluster: maintenance, HA, ADS, the CVMs."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ahvlite.controller.api.reads import NoQuery, Read, ReadContext


def maintenance(ctx: ReadContext, _q: NoQuery) -> dict[str, Any]:
    from ahvlite.cluster import maintenance as m

    return m.status(ctx.spec())


def ha(ctx: ReadContext, _q: NoQuery) -> dict[str, Any]:
    """What ``ha show`` shows: settings, reservation, VMs, and the leader's HA view."""
    from ahvlite.controller.ha import inventory
    from ahvlite.controller.ha.records import STATUS_KEY

    data = inventory.show(ctx.spec())
    got = ctx.coord.get(STATUS_KEY)
    view = None
    if got is not None:
        try:
            view = json.loads(got.value)
        except (ValueError, UnicodeDecodeError):
            view = None
    data["leader_view"] = view if isinstance(view, dict) else None
    return data


def ads_rules(ctx: ReadContext, _q: NoQuery) -> dict[str, Any]:
    from ahvlite.cluster.adsrules import load_rules
    from ahvlite.sched.model import stale_rule_hosts

    spec = ctx.spec()
    rules = load_rules(spec.state)
    # Hosts removed since the rule was added: ignored by ADS, flagged here.
    stale = stale_rule_hosts(rules, {h.name for h in spec.hosts})
    return {**rules.to_dict(), "stale": {k: list(v) for k, v in stale.items()}}


class SampleQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_s: float = Field(1.0, ge=0.2, le=60, description="seconds between two samples "
                            "of a host whose controller publishes no stats")


def ads_snapshot(ctx: ReadContext, q: SampleQuery) -> dict[str, Any]:
    from ahvlite.controller import adslive

    return dict(adslive.live_problem(ctx.spec(), sample_s=q.sample_s).to_dict())


def _plan_query() -> type[BaseModel]:
    from ahvlite.controller.kinds.ads import PlanOptions

    class PlanQuery(PlanOptions):
        model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    return PlanQuery


def ads_plan(ctx: ReadContext, q: Any) -> dict[str, Any]:
    """A dry run: the hotspots and the moves ADS would make, in order, with cost."""
    from ahvlite.controller import adslive

    problem = adslive.live_problem(ctx.spec(), sample_s=q.sample_s,
                                   cpu_threshold=q.cpu_threshold,
                                   storage_threshold=q.storage_threshold,
                                   move_penalty=q.move_penalty)
    return dict(adslive.plan(problem, solver=q.solver, time_limit_s=q.time_limit_s).to_dict())


def ads_effectiveness(ctx: ReadContext, q: SampleQuery) -> dict[str, Any]:
    from ahvlite.controller import adslive

    return adslive.effectiveness(ctx.spec(), sample_s=q.sample_s)


def cvms(ctx: ReadContext, _q: NoQuery) -> list[dict[str, Any]]:
    from ahvlite.cluster import cvm

    return cvm.status(ctx.spec())


def cvm_one(ctx: ReadContext, _q: NoQuery, *, host: str) -> list[dict[str, Any]]:
    from ahvlite.cluster import cvm

    return cvm.status(ctx.spec(), host)


class CvmPlanQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    controller: list[str] = Field(default_factory=list, max_length=64,
                                  description="PCI addresses to pass through (default: "
                                              "every one that passes the checks)")
    lab_luns: int = Field(0, ge=0, le=64, description="how many lab LUNs")


def cvm_plan(ctx: ReadContext, q: CvmPlanQuery, *, host: str) -> dict[str, Any]:
    from ahvlite.cluster import cvm

    return dict(cvm.plan(ctx.spec(), host, controllers=tuple(q.controller),
                         lab_luns=q.lab_luns).to_dict())


READS: tuple[Read, ...] = (
    Read("/v1/maintenance", maintenance,
         "each host's maintenance state and what maintenance did with its VMs"),
    Read("/v1/ha", ha, "HA settings, reservation per host, protected VMs, failover "
                       "capacity, and the leader's HA view"),
    Read("/v1/ads/rules", ads_rules, "the ADS rules, and hosts they name that are gone"),
    Read("/v1/ads/snapshot", ads_snapshot, "the live cluster as ADS input", SampleQuery),
    Read("/v1/ads/plan", ads_plan, "a dry run: the moves ADS would make, in order",
         _plan_query()),
    Read("/v1/ads/effectiveness", ads_effectiveness,
         "predicted (by the last plan that moved VMs) vs observed CPU of each host",
         SampleQuery),
    Read("/v1/cvms", cvms, "the CVM of each host"),
    Read("/v1/cvms/{host}", cvm_one, "the CVM of one host"),
    Read("/v1/cvms/{host}/plan", cvm_plan,
         "what the host would pass to its CVM, and why (checks with their fixes)",
         CvmPlanQuery),
)
