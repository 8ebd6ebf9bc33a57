"""What the kinds that change the cluster spec share: the store's cluster state (also
before any spec exists, for ``cluster.apply``), the spec read from the store itself
(not the watch-fed view, which may lag a change made a moment ago), and a
compare-and-set change of the spec made right after a leadership check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from ahvlite.cluster.state import ClusterState
from ahvlite.controller.kinds.base import Kind, Params
from ahvlite.controller.tasks import TaskContext
from ahvlite.errors import NotFound
from ahvlite.spec.cluster import ClusterSpec

P = TypeVar("P", bound=Params)


class SpecKind(Kind[P]):
    def state(self) -> ClusterState:
        """The cluster's documents in the controller's store (the cluster view's)."""
        state = getattr(self._cluster, "state", None)
        if state is None and self._cluster is not None:
            state = self._cluster().state  # a plain function giving a spec with its state
        if not isinstance(state, ClusterState):
            raise NotFound("this controller keeps no cluster state",
                           hint="run it with a store (`ahvlite controller run --store`)")
        return state

    def cluster(self) -> ClusterSpec:
        """The spec as the store holds it now (NotFound while it holds none)."""
        from ahvlite.cluster.specwrite import read_spec

        spec, _ = read_spec(self.state())
        if spec is None:
            raise NotFound("the store holds no cluster yet",
                           hint="`ahvlite cluster apply -f cluster.yaml` stores one")
        return spec

    def change_spec(self, ctx: TaskContext, change: Callable[[ClusterSpec], ClusterSpec | None]
                    ) -> tuple[ClusterSpec, bool]:
        """Change the stored spec by compare-and-set (see ``cluster.specwrite``)."""
        from ahvlite.cluster.specwrite import change_spec

        return change_spec(self.state(), change, guard=ctx.check_leader)


def spec_json(spec: BaseModel) -> dict[str, Any]:
    """The stored form of a spec or one of its entries (what compares equal)."""
    return spec.model_dump(mode="json", exclude_none=True)
