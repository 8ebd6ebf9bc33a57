"""The API's read operations: one table, one line per operation.

Any controller serves them from the coordination store (no forwarding). A read is a
plain function of a :class:`ReadContext` and its validated query (a pydantic model;
its fields become the query parameters) returning JSON-able data. Store documents
are not trusted: a record that does not parse is left out, never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ahvlite.controller.api.models import Info, LeaderInfo
from ahvlite.controller.coord.api import Coordinator
from ahvlite.controller.daemon import LEADER_KEY
from ahvlite.controller.ha.records import STATUS_KEY as HA_STATUS_KEY
from ahvlite.controller.status import controller_status
from ahvlite.errors import NotFound
from ahvlite.sched.stats import select
from ahvlite.spec.cluster import ClusterSpec


@dataclass(frozen=True)
class ReadContext:
    coord: Coordinator
    controller: str  # this controller's name
    # The controller's cluster as the store holds it now (None: it serves no cluster).
    view: Callable[[], ClusterSpec] | None = None

    @property
    def cluster(self) -> str | None:
        """The cluster's name, where this controller knows one."""
        try:
            return self.spec().name
        except NotFound:
            return None

    def spec(self) -> ClusterSpec:
        """The cluster (NotFound while the store holds none)."""
        if self.view is None:
            raise NotFound("this controller serves no cluster")
        return self.view()


class NoQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Read:
    """``GET path`` answers ``fn(ctx, query, **path_params)``; ``query`` validates the
    query parameters, each ``{name}`` in ``path`` is passed by keyword."""

    path: str
    fn: Callable[..., Any]  # (ctx, query, **path_params)
    summary: str
    query: type[BaseModel] = NoQuery
    response: Any = None  # a model for the OpenAPI document, when there is one


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _dict(raw: bytes | str) -> dict[str, Any]:
    value = _json(raw.encode() if isinstance(raw, str) else raw)
    return value if isinstance(value, dict) else {}


def leader_info(coord: Coordinator) -> LeaderInfo | None:
    """Who leads now and where its API is: from its ``controller/leader`` record when
    that is the current term's, else from its member data."""
    lead = coord.leader()
    if lead is None:
        return None
    who = _dict(lead.identity)
    name = who.get("name") if isinstance(who.get("name"), str) else None
    host = who.get("host") if isinstance(who.get("host"), str) else None
    got = coord.get(LEADER_KEY)
    record = _dict(got.value) if got is not None else {}
    api = record.get("api") if record.get("token") == lead.token else None
    if api is None and name is not None:
        api = _dict(coord.members().get(name, b"")).get("api")
    return LeaderInfo(name=name, host=host, token=lead.token,
                      api=api if isinstance(api, str) else None)


def info(ctx: ReadContext, _q: NoQuery) -> Info:
    return Info(cluster=ctx.cluster, controller=ctx.controller, leader=leader_info(ctx.coord))


class StatsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str | None = Field(None, max_length=253, description="only this host")
    vm: str | None = Field(None, max_length=253, description="only this VM")


def _host_record(raw: bytes) -> dict[str, Any] | None:
    r = _json(raw)
    if (isinstance(r, dict) and isinstance(r.get("host"), str) and isinstance(r.get("vms"), list)
            and all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in r["vms"])):
        return r
    return None


def stats(ctx: ReadContext, q: StatsQuery) -> list[dict[str, Any]]:
    parsed = (_host_record(v.value) for v in ctx.coord.children("stats").values())
    records = sorted((r for r in parsed if r is not None), key=lambda r: r["host"])
    found = select(records, q.host, q.vm)
    if (q.host or q.vm) and not found:
        what = " ".join(x for x in (q.host and f"host {q.host}", q.vm and f"VM {q.vm}") if x)
        raise NotFound(f"no stats for {what}",
                       hint="each host's controller publishes its own every "
                            "--stats-interval seconds")
    return found


def ha_status(ctx: ReadContext, _q: NoQuery) -> Any:
    got = ctx.coord.get(HA_STATUS_KEY)
    return None if got is None else _json(got.value)


CORE: tuple[Read, ...] = (
    Read("/v1/info", info, "this controller, the leader and its API", response=Info),
    Read("/v1/controller/status", lambda ctx, _q: controller_status(ctx.coord),
         "the leader, the members and their heartbeats, the store"),
    Read("/v1/stats", stats, "the newest host and VM figures the leader published",
         StatsQuery),
    Read("/v1/ha/status", ha_status, "what the leader's HA service last published"),
)
