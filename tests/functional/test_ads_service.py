"""The leader's ADS service on the real SQLite coordinator with a fake clock: it plans
every interval, submits the plan's moves as vm.migrate tasks strictly one after the
other, drops the rest of a plan when a move fails, and stops when deposed."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest

from ahvlite.clock import FakeClock
from ahvlite.controller.adsservice import LAST_MOVING_KEY, LAST_PLAN_KEY, AdsService
from ahvlite.controller.coord.api import NotLeader
from ahvlite.controller.kinds import registry
from ahvlite.controller.tasks import TaskState, TaskStore
from tests.unit.test_sched_planner import ahv_doc_example

pytestmark = pytest.mark.functional


def tasks(coord) -> list:
    return [t for t, _ in TaskStore(coord).all()]


def finish(coord, task_id: str, state: TaskState) -> None:
    store = TaskStore(coord)
    task, version = store.load(task_id)
    store.write(replace(task, state=state), version, fenced=True)


def test_moves_run_in_order_one_task_at_a_time(leader):
    clock = FakeClock(1000.0)
    svc = AdsService(leader, ahv_doc_example, interval_s=900, first_delay_s=0,
                     clock=clock)
    svc.step()
    first = tasks(leader)
    assert [(t.kind, t.params["name"], t.params["to"]) for t in first] == [
        ("vm.migrate", "h3-8g", "host2")]
    # What the controller will run is a valid vm.migrate (on its own cluster).
    assert registry()["vm.migrate"].validate(first[0].params) == first[0].params == {
        "name": "h3-8g", "to": "host2"}
    stored = json.loads(leader.get(LAST_PLAN_KEY).value)
    assert [m["vm"] for m in stored["moves"]] == ["h3-8g", "h1-small"]
    assert stored["at"] == 1000.0 and stored["solver"] == "cpsat"
    assert json.loads(leader.get(LAST_MOVING_KEY).value) == stored

    svc.step()  # the first move still runs: nothing else is submitted
    assert len(tasks(leader)) == 1
    finish(leader, first[0].id, TaskState.SUCCEEDED)
    svc.step()
    second = [t for t in tasks(leader) if t.id != first[0].id]
    assert [(t.params["name"], t.params["to"]) for t in second] == [("h1-small", "host3")]

    # A failed move drops the rest; no new plan before the interval is up.
    finish(leader, second[0].id, TaskState.FAILED)
    clock.now += 899
    svc.step()
    assert len(tasks(leader)) == 2 and svc.queue == [] and svc.current is None
    clock.now += 1
    svc.step()  # a new round: the same hot cluster, the same first move
    assert len(tasks(leader)) == 3
    assert json.loads(leader.get(LAST_PLAN_KEY).value)["at"] == 1900.0


def test_failed_first_move_drops_the_plan(leader):
    clock = FakeClock(0.0)
    svc = AdsService(leader, ahv_doc_example, interval_s=900, first_delay_s=0,
                     clock=clock)
    svc.step()
    (task,) = tasks(leader)
    assert "cluster" not in task.params  # the controller's own cluster file then
    finish(leader, task.id, TaskState.CANCELLED)
    svc.step()
    assert len(tasks(leader)) == 1 and svc.queue == []


def test_no_hotspot_no_tasks_and_a_deposed_leader_stops(leader):
    calm = ahv_doc_example()
    calm = calm.with_vms(tuple(replace(v, cpu_history_pct=(10.0,)) for v in calm.vms))
    clock = FakeClock(0.0)
    svc = AdsService(leader, lambda: calm, interval_s=60, first_delay_s=30,
                     clock=clock)
    svc.step()
    assert leader.get(LAST_PLAN_KEY) is None  # the first round waits for stats
    clock.now = 30
    svc.step()
    assert tasks(leader) == []
    assert json.loads(leader.get(LAST_PLAN_KEY).value)["status"] == "no-hotspot"
    assert leader.get(LAST_MOVING_KEY) is None  # effectiveness keeps the last real plan
    leader.resign()
    clock.now = 100
    with pytest.raises(NotLeader):
        svc.step()
    # The thread form ends by itself at its next round's fenced write.
    clock.now = 1000
    svc.poll_s = 0.01
    svc.start()
    svc.loop.thread.join(timeout=5)  # type: ignore[union-attr]
    assert not svc.loop.thread.is_alive()  # type: ignore[union-attr]


def test_a_deleted_move_task_clears_the_plan_and_the_next_round_plans(leader):
    clock = FakeClock(0.0)
    svc = AdsService(leader, ahv_doc_example, interval_s=900, first_delay_s=0,
                     clock=clock)
    svc.step()
    (task,) = tasks(leader)
    assert svc.current == task.id and len(svc.queue) == 1
    leader.delete(TaskStore(leader).key(task.id))  # e.g. a task purge
    svc.step()  # no NotFound on every poll: the move in flight and the rest are dropped
    assert svc.current is None and svc.queue == [] and tasks(leader) == []
    clock.now = 900
    svc.step()  # the next round plans afresh and submits its first move
    assert [t.params["name"] for t in tasks(leader)] == ["h3-8g"]


def test_an_unexpected_error_does_not_end_the_ads_thread(leader):
    calls = {"n": 0}
    second_round = threading.Event()

    def snapshot():
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("a bug in the snapshot")  # not an AhvliteError
        second_round.set()
        return ahv_doc_example()

    clock = FakeClock(0.0)
    svc = AdsService(leader, snapshot, interval_s=0, first_delay_s=0, poll_s=0.01,
                     clock=clock)
    svc.start()
    try:
        assert second_round.wait(5), "the ADS thread died on the first error"
        assert svc.loop.thread.is_alive()  # type: ignore[union-attr]
    finally:
        svc.stop()


def test_a_plan_ha_admission_refuses_moves_nothing_and_says_why(leader):
    from ahvlite.errors import Conflict

    seen: list[list[tuple[str, str]]] = []

    def admit(moves):
        seen.append(moves)
        raise Conflict("moving h3-8g to host2 would break the HA guarantee: 8192 MiB missing")

    clock = FakeClock(0.0)
    svc = AdsService(leader, ahv_doc_example, interval_s=900, first_delay_s=0,
                     clock=clock, admit=admit)
    svc.step()
    # The whole plan is admitted at once (a later move may need an earlier one's room).
    assert seen == [[("h3-8g", "host2"), ("h1-small", "host3")]]
    assert tasks(leader) == [] and svc.queue == [] and svc.current is None
    stored = json.loads(leader.get(LAST_PLAN_KEY).value)
    assert "8192 MiB missing" in stored["refused"] and stored["moves"]
    assert leader.get(LAST_MOVING_KEY) is None  # nothing moved: effectiveness keeps its plan
    clock.now = 900
    svc.admit = lambda moves: None  # admitted next round (room was made meanwhile)
    svc.step()
    assert [t.params["name"] for t in tasks(leader)] == ["h3-8g"]
