"""Cluster state documents: atomic, locked read-modify-write, clear errors."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from ahvlite.cluster.state import ClusterState
from ahvlite.errors import InvalidSpec


def _bump(directory: str, n: int) -> None:
    st = ClusterState(Path(directory))
    for _ in range(n):
        st.update("counter", lambda d: {"n": d.get("n", 0) + 1})


def test_concurrent_updates_from_processes_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_bump, args=(str(tmp_path), 50)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert ClusterState(tmp_path).get("counter") == {"n": 200}


def test_beside_the_cluster_file_and_defaults(tmp_path):
    cluster_file = tmp_path / "cluster.yaml"
    st = ClusterState.for_cluster_file(cluster_file)
    assert st.get("maintenance", {"hosts": {}}) == {"hosts": {}}
    st.put("maintenance", {"hosts": {"h1": {"since": 1}}})
    assert (tmp_path / "cluster-state" / "maintenance.json").exists()
    assert ClusterState.for_cluster_file(cluster_file).get("maintenance")["hosts"]["h1"]


def test_bad_key_and_corrupt_file_are_clear_errors(tmp_path):
    st = ClusterState(tmp_path)
    with pytest.raises(InvalidSpec) as exc:
        st.get("../etc/passwd")
    assert exc.value.field == "state key"
    (tmp_path / "ha.json").write_text("{not json")
    with pytest.raises(InvalidSpec) as exc:
        st.get("ha")
    assert "JSON" in exc.value.message
