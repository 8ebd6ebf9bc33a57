"""What every task kind shares: typed parameters and the controller's cluster.

A task record comes from the store, which is outside this process. Each kind declares
its parameters as a pydantic model that refuses unknown fields (a record from a newer
or hostile writer), so acting on half of what was asked never happens; the first
problem is one InvalidSpec naming the field. Hosts are named only by their name in
the controller's own cluster (never a URI or a file), checked when the leader claims
the task and again when it runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ahvlite.controller.tasks import TaskContext
from ahvlite.errors import InvalidSpec, NotFound
from ahvlite.spec.cluster import NAME, ClusterSpec, HostSpec
from ahvlite.spec.errors import build

HostName = str  # validated against the cluster by Kind.host()


class Params(BaseModel):
    """Base of every kind's parameters: unknown fields are refused, and types are
    strict (``"yes"`` is no boolean, ``1.5`` no count)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


P = TypeVar("P", bound=Params)
HOST_FIELD = Field(pattern=NAME, description="a host name of the cluster")
OPTIONAL_HOST = Field(None, pattern=NAME, description="a host name of the cluster, or none")


class Kind(Generic[P]):
    """A task kind. ``Params`` types its parameters; :meth:`run` does the work through
    ``ctx.step`` (each step idempotent: it checks before it acts); ``resumable`` says a
    new leader may run it again after the old one died mid-way."""

    name: ClassVar[str]
    resumable: ClassVar[bool] = True
    offered: ClassVar[bool] = True  # listed among the kinds this controller takes
    Params: ClassVar[type[Params]]

    def __init__(self, cluster: Callable[[], ClusterSpec] | None = None) -> None:
        self._cluster = cluster

    # -- parameters ---------------------------------------------------------------------

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise InvalidSpec("params", params, f"a JSON object of {self.name}'s parameters")
        p = build(self.Params, **params)
        if self._cluster is not None:
            self.check(p)  # type: ignore[arg-type]  # the leader's registry: the cluster is known
        return p.model_dump(mode="json")

    def check(self, p: P) -> None:
        """Checks that need the cluster (hosts exist, ...); run when it is known."""

    def params(self, ctx: TaskContext) -> P:
        return self.Params.model_validate(ctx.params)  # type: ignore[return-value]

    # -- the cluster --------------------------------------------------------------------

    def cluster(self) -> ClusterSpec:
        if self._cluster is None:
            raise NotFound("this controller has no cluster",
                           hint="`ahvlite cluster apply -f cluster.yaml` stores one")
        return self._cluster()

    def host(self, field: str, name: str | None) -> HostSpec | None:
        """The cluster's host ``name`` (None for None), or InvalidSpec listing them."""
        if name is None:
            return None
        return cluster_host(self.cluster(), field, name)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        raise NotImplementedError


class HostParams(Params):
    """Parameters of a kind that acts on one host of the cluster."""

    host: str = HOST_FIELD


HP = TypeVar("HP", bound=HostParams)


class HostKind(Kind[HP]):
    """A kind on one host: ``host`` must be a host of the cluster."""

    def check(self, p: HP) -> None:
        self.host("host", p.host)


def cluster_host(cluster: ClusterSpec, field: str, host: str) -> HostSpec:
    """The cluster's HostSpec named ``host``, or InvalidSpec listing the hosts."""
    names = [h.name for h in cluster.hosts]
    if host not in names:
        raise InvalidSpec(field, host, f"a host of cluster {cluster.name!r} "
                          f"({', '.join(names) or 'none'})")
    return cluster.host(host)


def attempt_tag(task_id: str, attempt: int) -> str:
    """The short tag of one attempt of a task: the volumes it makes carry it, so two
    attempts (a deposed leader's and the next one's) never share a volume name."""
    return hashlib.sha256(f"{task_id}/{attempt}".encode()).hexdigest()[:8]
