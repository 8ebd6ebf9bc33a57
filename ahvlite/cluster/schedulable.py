"""Which hosts take no new VMs: those in maintenance mode (state document
``maintenance``, written by ``ahvlite.cluster.maintenance``). Kept apart so placement
can read it without importing migration."""

from __future__ import annotations

from typing import Any

from ahvlite.cluster.state import ClusterState
from ahvlite.errors import Conflict
from ahvlite.spec.cluster import ClusterSpec

MAINTENANCE_KEY = "maintenance"


def maintenance_doc(state: ClusterState) -> dict[str, Any]:
    doc = state.get(MAINTENANCE_KEY)
    doc.setdefault("hosts", {})
    return doc


def unschedulable_hosts(state: ClusterState) -> set[str]:
    """Hosts entering, in, or stuck entering maintenance: none of them gets VMs."""
    return set(maintenance_doc(state)["hosts"])


def closed_hosts(cluster: ClusterSpec, requested: str | None = None) -> set[str]:
    """Hosts that take no new VMs; asking for one of them by name is a Conflict."""
    closed = unschedulable_hosts(cluster.state)
    if requested in closed:
        raise Conflict(f"host {requested} is in maintenance mode and takes no new VMs",
                       hint=f"`ahvlite host maintenance exit {requested}`, or another --host")
    return closed
