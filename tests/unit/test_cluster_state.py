"""Cluster documents in the store: compare-and-set updates that lose nothing across
processes, collections, locks, the spec, clear errors; and the old cluster directory
read as a store (what `cluster apply` imports)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from ahvlite.cluster.legacy import DirStore, legacy_documents, open_cluster_file
from ahvlite.cluster.state import SPEC_KEY, ClusterState
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.errors import Conflict, InvalidSpec, NotFound
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from tests.stores import sqlite_state


def _bump(db: str, n: int) -> None:
    st = ClusterState(SqliteCoordinator(Path(db)))
    for _ in range(n):
        st.update("counter", lambda d: {"n": d.get("n", 0) + 1})


def test_concurrent_updates_from_processes_lose_nothing(tmp_path):
    st = sqlite_state(tmp_path)  # creates the database first
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_bump, args=(str(tmp_path / "store.db"), 50))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert st.get("counter") == {"n": 200}


def test_documents_collections_and_defaults(tmp_path):
    st = sqlite_state(tmp_path)
    assert st.get("maintenance", {"hosts": {}}) == {"hosts": {}}
    st.put("maintenance", {"hosts": {"h1": {"since": 1}}})
    assert st.get("maintenance")["hosts"]["h1"] == {"since": 1}
    st.create_doc("templates", "web", {"name": "web"})
    with pytest.raises(Conflict):
        st.create_doc("templates", "web", {"name": "web"})
    st.update_doc("templates", "web", lambda d: {**d, "v": 2})
    assert st.docs("templates") == {"web": {"name": "web", "v": 2}}
    with pytest.raises(NotFound):
        st.update_doc("templates", "db", lambda d: d)
    assert st.delete_doc("templates", "web") and not st.delete_doc("templates", "web")


def test_a_change_that_raises_leaves_the_document_as_it_was(tmp_path):
    st = sqlite_state(tmp_path)
    st.put("ha", {"mode": "default"})

    def bad(doc):
        doc["mode"] = "half-done"
        raise Conflict("no")

    with pytest.raises(Conflict):
        st.update("ha", bad)
    assert st.get("ha") == {"mode": "default"}


def test_locks_exclude_a_second_holder(tmp_path):
    a = sqlite_state(tmp_path)
    b = ClusterState(SqliteCoordinator(tmp_path / "store.db"))
    with a.lock("maintenance-h1", busy="busy"), pytest.raises(Conflict, match="busy"), \
            b.lock("maintenance-h1", busy="busy", timeout_s=0.2):
        pass
    with b.lock("maintenance-h1", busy="busy"):
        pass


def test_the_spec_round_trips_with_compare_and_set(tmp_path):
    st = sqlite_state(tmp_path)
    with pytest.raises(NotFound) as exc:
        st.spec()
    assert "cluster apply" in (exc.value.hint or "")
    spec = ClusterSpec(name="c", hosts=[HostSpec(name="h1", uri="test:///default")])
    st.write_spec(spec, None)
    back = st.spec()
    assert back.model_dump() == spec.model_dump() and back.state is st
    v = st.spec_version()
    with pytest.raises(Conflict):
        st.write_spec(spec, None)  # exists already
    st.write_spec(spec.model_copy(update={"labels": {"a": "b"}}), v)
    with pytest.raises(Conflict):
        st.write_spec(spec, v)  # stale version


def test_bad_keys_and_corrupt_documents_are_clear_errors(tmp_path):
    st = sqlite_state(tmp_path)
    with pytest.raises(InvalidSpec) as exc:
        st.get("../etc/passwd")
    assert exc.value.field == "state key"
    st.store.put("cluster/state/ha", b"{not json")
    with pytest.raises(InvalidSpec) as exc:
        st.get("ha")
    assert "JSON" in exc.value.message
    st.store.put(SPEC_KEY, json.dumps({"name": "c", "hosts": [{"name": "h1",
                                                               "uri": "qemu+tcp://x/system"}]
                                       }).encode())
    with pytest.raises(InvalidSpec, match="uri"):
        st.spec()  # a hostile or damaged spec is refused like any input
    with pytest.raises(InvalidSpec):
        st.doc("templates", "../x")


def test_an_old_cluster_directory_reads_as_a_store(tmp_path):
    cf = tmp_path / "cluster.yaml"
    cf.write_text(ClusterSpec(name="c").dump_yaml())
    (tmp_path / "cluster-state").mkdir()
    (tmp_path / "cluster-state" / "maintenance.json").write_text('{"hosts": {"h1": {}}}')
    (tmp_path / "cluster-cpu.json").write_text('{"model": "Westmere"}')
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "web.json").write_text('{"name": "web"}')
    docs = legacy_documents(cf)
    assert sorted(docs) == ["cluster/state/cpu", "cluster/state/maintenance", "templates/web"]
    spec = open_cluster_file(cf)
    assert spec.state.get("maintenance") == {"hosts": {"h1": {}}}
    spec.state.update("ads-rules", lambda d: {"anti_affinity": []})
    assert json.loads((tmp_path / "cluster-state" / "ads-rules.json").read_text()) == {
        "anti_affinity": []}
    with pytest.raises(NotFound):
        DirStore(tmp_path).get(SPEC_KEY)  # the spec is the YAML itself
