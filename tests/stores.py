"""Clusters kept in a real store (the embedded SQLite one) for tests."""

from __future__ import annotations

from pathlib import Path

from ahvlite.cluster.state import ClusterState
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.spec.cluster import ClusterSpec


def sqlite_state(tmp_path: Path, name: str = "store.db") -> ClusterState:
    return ClusterState(SqliteCoordinator(tmp_path / name))


def in_store(spec: ClusterSpec, tmp_path: Path, name: str = "store.db") -> ClusterSpec:
    """``spec`` written to a fresh store, read back with its documents attached."""
    state = sqlite_state(tmp_path, name)
    state.write_spec(spec, None)
    return state.spec()
