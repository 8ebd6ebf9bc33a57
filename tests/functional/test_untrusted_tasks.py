"""Task records are untrusted input: a leader on a real store (SQLite, and ZooKeeper)
fails what does not decode, names no URI or file, runs no program, and goes on.

Each record is written straight into the store, as anything holding the store's
credential (or a newer ahvlite) could write it: the CLI's own checks are not in the way.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import uuid

import pytest

from ahvlite.cluster.legacy import open_cluster_file
from ahvlite.controller.coord import MUST_NOT_EXIST, open_store
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.controller.daemon import Controller, Identity
from ahvlite.controller.kinds import registry
from ahvlite.controller.tasks import Task, TaskState, TaskStore, new_task_id
from tests.clirun import ahvlite
from tests.waiting import wait_for

pytestmark = pytest.mark.functional

CLUSTER_YAML = "name: c\nhosts:\n  - name: h1\n    uri: test:///default\n"


@pytest.fixture(params=["sqlite", "zk"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/c.db"
    return request.getfixturevalue("zk").url(f"u{uuid.uuid4().hex[:8]}")


@pytest.fixture
def leader(store_url, tmp_path):
    """A controller with its own cluster file, running in this process."""
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER_YAML)
    coord = open_store(store_url)
    spec = open_cluster_file(cluster)
    ctl = Controller(coord, Identity("ctl", "here", os.getpid()), registry(lambda: spec),
                     poll_s=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    thread.start()
    reader = open_store(store_url)
    try:
        yield TaskStore(reader), thread
    finally:
        stop.set()
        thread.join(timeout=15)
        reader.close()


def put_raw(store: TaskStore, raw: bytes) -> str:
    task_id = new_task_id(time.time())
    store.coord.put(store.key(task_id), raw, MUST_NOT_EXIST)
    return task_id


def record(task_id: str, kind: str, params: dict, **extra) -> bytes:
    d = json.loads(Task(id=task_id, kind=kind, params=params).to_json())
    return json.dumps({**d, **extra}).encode()


def put_task(store: TaskStore, kind: str, params: dict, **extra) -> str:
    task_id = new_task_id(time.time())
    store.coord.put(store.key(task_id), record(task_id, kind, params, **extra), MUST_NOT_EXIST)
    return task_id


def ended(store: TaskStore, task_id: str, timeout_s: float = 20) -> Task:
    return wait_for(lambda: (t := store.load(task_id)[0]).terminal and t, timeout_s)


def cli_over(store: TaskStore, tmp_path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``ahvlite ARGV`` through an API served over ``store``'s coordinator."""
    from ahvlite.controller.api.settings import ApiSettings, start_api
    from tests.apicluster import client_env, make_pki

    pki = make_pki(tmp_path / "pki")
    settings = ApiSettings("127.0.0.1", 0, pki / "server.pem", pki / "server-key.pem",
                           pki / "ca.pem", None, tmp_path / "uploads")
    server, url = start_api(settings, store.coord, "reader", registry())
    try:
        return ahvlite(*argv, env=client_env(pki, url), timeout_s=60)
    finally:
        server.stop()


def test_bad_records_fail_with_the_reason_and_the_next_task_runs(leader, tmp_path):
    store, thread = leader
    bad = {  # what: (task id, what its error names)
        "not json": (put_raw(store, b"\xff{not json"), "JSON"),
        "not an object": (put_raw(store, b"[1, 2, 3]"), "a JSON object"),
        "newer schema": (put_task(store, "sleep", {"steps": 1}, priority=5),
                         "'priority' is not one"),
        "wrong type": (put_task(store, "sleep", {"steps": 1}, attempts="3"), "attempts"),
        "unknown state": (put_task(store, "sleep", {"steps": 1}, state="paused"), "state"),
    }
    good = put_task(store, "sleep", {"steps": 2, "step_s": 0.05})

    assert ended(store, good).state == TaskState.SUCCEEDED
    for what, (task_id, reason) in bad.items():
        task = ended(store, task_id)
        assert task.state == TaskState.FAILED, what
        assert "undecodable task record" in task.error and reason in task.error, (what,
                                                                                  task.error)
        # What the leader wrote back decodes (the stand-in keeps the record's text).
        got = store.coord.get(store.key(task_id))
        assert Task.from_json(got.value).state == TaskState.FAILED
        assert task.result and "record" in task.result
    assert store.load(bad["newer schema"][0])[0].kind == "sleep"
    assert thread.is_alive()

    # The CLI (through an API over the same store) lists every one of them, as failed.
    listed = cli_over(store, tmp_path, "task", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    states = {t["id"]: t["state"] for t in json.loads(listed.stdout)}
    assert all(states[i] == "failed" for i, _ in bad.values()) and states[good] == "succeeded"


def test_a_record_written_undecodable_is_listed_as_failed_before_any_leader(tmp_path):
    coord = SqliteCoordinator(tmp_path / "c.db")
    try:
        store = TaskStore(coord)
        task_id = put_raw(store, b'{"id": 1}')
        (task, _), = store.all()
        assert task.id == task_id and task.state == TaskState.FAILED
        assert "field id" in (task.error or "")
    finally:
        coord.close()


@pytest.fixture
def marker_program(tmp_path):
    """A program that would leave a marker if anything ever ran it."""
    marker = tmp_path / "marker"
    prog = tmp_path / "marker-writer"
    prog.write_text(f"#!/bin/sh\ntouch {marker}\nsleep 2\n")
    prog.chmod(0o755)
    return prog, marker


@pytest.fixture
def listening_port():
    # Something accepts on the port, so a libvirt that tried the URI would get as far
    # as running its ssh "command" (which is what the program stands in for).
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        yield srv.getsockname()[1]


def test_tasks_naming_uris_files_or_foreign_hosts_fail_and_run_nothing(
        leader, marker_program, listening_port):
    store, thread = leader
    prog, marker = marker_program
    evil = f"qemu+ssh://127.0.0.1:{listening_port}/system?command={prog}"
    cases = {
        put_task(store, "vm.create", {"uri": evil, "name": "m1"}): "uri=",
        put_task(store, "vm.create", {"host": "h1", "name": "m2", "uri": evil}): "uri=",
        put_task(store, "vm.create", {"host": "evil", "name": "m3"}): "host='evil'",
        put_task(store, "vm.spec.create", {"spec": {"name": "m4"}, "host": "h9"}): "host='h9'",
        put_task(store, "vm.migrate", {"name": "m5", "to": "h9"}): "to='h9'",
        put_task(store, "vm.lifecycle", {"action": "start", "name": "m6",
                                         "cluster": str(prog)}): "cluster=",
    }
    good = put_task(store, "sleep", {"steps": 1, "step_s": 0})
    assert ended(store, good).state == TaskState.SUCCEEDED
    ends = {task_id: ended(store, task_id) for task_id in cases}
    time.sleep(0.5)  # a program started by libvirt would have touched it by now
    assert not marker.exists()
    for task_id, needle in cases.items():
        task = ends[task_id]
        assert task.state == TaskState.FAILED and needle in (task.error or ""), task.error
    assert thread.is_alive()
