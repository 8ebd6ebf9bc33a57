"""``ahvlite task ...`` through a real controller's API: submit (checked by the kind
first), list, show, wait, cancel; one clear message and exit code, never a traceback."""

from __future__ import annotations

import json

import pytest

from ahvlite.controller.tasks import TaskStore
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from tests.apicluster import api_cluster
from tests.taskrecords import ended
from tests.waiting import wait_for

pytestmark = pytest.mark.functional

SPEC = ClusterSpec(name="ctask", shared_pool="default-pool",
                   hosts=[HostSpec(name="h1", uri="test:///default")])
WORKERS = 4  # the test controller's (Controller's default)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with api_cluster(tmp_path_factory.mktemp("ctask"), SPEC) as c:
        yield c


def listed(api) -> dict[str, dict]:
    r = api.cli("task", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {t["id"]: t for t in json.loads(r.stdout)}


def test_task_commands(api):
    bad = api.cli("task", "submit", "vm.create", "-p", "name=x")
    assert bad.returncode == 2 and "host=None" in bad.stderr
    # Every worker busy, so the next task stays queued (and can be cancelled as such).
    blockers = [json.loads(api.cli("task", "submit", "sleep", "-p", "steps=600", "-p",
                                   "step_s=0.1", "--json").stdout)["id"]
                for _ in range(WORKERS)]
    try:
        store = TaskStore(api.coord)
        assert wait_for(lambda: all(store.load(b)[0].state == "running" for b in blockers),
                        30)
        sub = api.cli("task", "submit", "sleep", "-p", "steps=2", "--json")
        task = json.loads(sub.stdout)
        assert task["state"] == "queued" and task["params"] == {"steps": 2, "step_s": 0.1}
        assert task["submitted_by"] == "cert:admin"
        assert listed(api)[task["id"]]["state"] == "queued"
        human = api.cli("task", "list")
        assert human.returncode == 0 and task["id"] in human.stdout
        shown = api.cli("task", "show", task["id"])
        assert shown.returncode == 0 and "queued" in shown.stdout
        cancelled = json.loads(api.cli("task", "cancel", task["id"], "--json").stdout)
        assert cancelled["state"] == "cancelled"
        again = api.cli("task", "cancel", task["id"], "--json")
        assert again.returncode == 4 and json.loads(again.stdout)["error"] == "conflict"
        waited = api.cli("task", "wait", task["id"])
        assert waited.returncode == 9 and "cancelled" in waited.stderr
        missing = api.cli("task", "show", "nope", "--json")
        assert missing.returncode == 3 and json.loads(missing.stdout)["error"] == "not_found"
        odd = api.cli("task", "show", "../tokens")
        assert odd.returncode == 2 and "task='../tokens'" in odd.stderr
        # A running task is asked to stop at its next step.
        asked = api.cli("task", "cancel", blockers[0])
        assert asked.returncode == 0 and "cancel requested" in asked.stdout
    finally:
        for b in blockers:
            if not store.load(b)[0].cancel_requested:
                store.cancel(b)
    for b in blockers:
        assert ended(api.coord, b).state == "cancelled"


def test_wait_follows_a_task_to_its_end(api):
    task = json.loads(api.cli("task", "submit", "sleep", "-p", "steps=3", "-p", "step_s=0.2",
                              "--json").stdout)
    waited = api.cli("task", "wait", task["id"], "--json")
    assert waited.returncode == 0, waited.stderr
    end = json.loads(waited.stdout)
    assert end["state"] == "succeeded" and end["result"] == {"steps": 3}
    slow = json.loads(api.cli("task", "submit", "sleep", "-p", "steps=50", "-p", "step_s=0.2",
                              "--json").stdout)
    timed_out = api.cli("task", "wait", slow["id"], "--timeout", "0.5")
    assert timed_out.returncode == 8 and "still running" in timed_out.stderr
    TaskStore(api.coord).cancel(slow["id"])


@pytest.mark.parametrize(("params", "needle"), [
    (["uri=qemu+ssh://127.0.0.1:1/system?command=/tmp/x", "name=x"], "uri="),
    (["host=h1", "name=x", "cluster=/etc/shadow"], "cluster='/etc/shadow'"),
    (["host=../h1", "name=x"], "host='../h1'"),
])
def test_task_submit_refuses_uris_files_and_odd_hosts(api, params, needle):
    before = listed(api)
    args = [a for p in params for a in ("-p", p)]
    r = api.cli("task", "submit", "vm.create", *args, extra_env={"COLUMNS": "300"})
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2 and "Traceback" not in r.stderr
    assert listed(api).keys() == before.keys()


def test_task_list_and_show_survive_undecodable_records(api):
    api.coord.put("tasks/0000000000001-junk", b"\xff\xfe not json")
    (task,) = [t for t in listed(api).values() if t["id"] == "0000000000001-junk"]
    assert task["state"] == "failed" and "undecodable" in task["error"]
    shown = api.cli("task", "show", "0000000000001-junk")
    assert shown.returncode == 0 and "undecodable" in shown.stdout
