"""Task records, recovery after a leader's death, steps, cancel: with a fake coordinator.

The fake keeps keys and versions in a dict and fences on a token the test controls;
it stands in only for the store's bookkeeping (the real stores have their own tests).
"""

from __future__ import annotations

import json
import threading
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import pytest

from ahvlite.clock import FakeClock
from ahvlite.controller.coord.api import (
    MUST_NOT_EXIST,
    Delete,
    Leadership,
    NotLeader,
    Put,
    Versioned,
    VersionMismatch,
)
from ahvlite.controller.tasks import (
    Task,
    TaskContext,
    TaskRunner,
    TaskState,
    TaskStore,
    decode,
)
from ahvlite.errors import Conflict, InvalidSpec, NotFound, OperationFailed


class FakeCoord:
    url = "fake://"
    session_timeout_s = 3.0

    def __init__(self) -> None:
        self.kv: dict[str, Versioned] = {}
        self.token: int | None = None
        self.mu = threading.Lock()

    def get(self, key):
        return self.kv.get(key)

    def put(self, key, value, expected_version=None):
        self.transaction([Put(key, value, expected_version)])
        return self.kv[key].version

    def delete(self, key, expected_version=None):
        self.transaction([Delete(key, expected_version)])

    def children(self, prefix):
        base = prefix + "/"
        return {k[len(base):]: v for k, v in self.kv.items()
                if k.startswith(base) and "/" not in k[len(base):]}

    def transaction(self, ops):
        with self.mu:
            for op in ops:
                have = self.kv.get(op.key)
                want = op.expected_version
                if (want == MUST_NOT_EXIST and have is not None) or (
                        want not in (None, MUST_NOT_EXIST)
                        and (have is None or have.version != want)):
                    raise VersionMismatch(op.key)
            for op in ops:
                if isinstance(op, Put):
                    have = self.kv.get(op.key)
                    self.kv[op.key] = Versioned(op.value, 0 if have is None else have.version + 1)
                else:
                    self.kv.pop(op.key)

    def check_leader(self):
        if self.token is None:
            raise NotLeader("not leader")
        return self.token

    def fenced(self, ops):
        self.check_leader()
        self.transaction(ops)

    def is_leader(self):
        return self.token is not None

    def leader(self):
        return Leadership("x", self.token) if self.token else None

    def lock(self, name, timeout_s):
        return nullcontext()


class Steps:
    """A handler whose steps record their effects: an effect twice = a visible double."""

    resumable = True

    def __init__(self, fail_at: str | None = None) -> None:
        self.effects: list[str] = []
        self.fail_at = fail_at
        self.gate: threading.Event | None = None

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        if "n" not in params:
            raise InvalidSpec("n", None, "an integer")
        return params

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        for i in range(ctx.params["n"]):
            name = f"s{i}"

            def effect(name: str = name) -> str:
                if self.gate is not None and name == "s1":
                    self.gate.wait(5)
                if name == self.fail_at:
                    raise OperationFailed(f"{name} broke")
                self.effects.append(name)
                return name

            ctx.step(name, effect)
        return {"done": len(self.effects)}


class TickingClock(FakeClock):
    """Wall time one second further at every read: task stamps and ids in order."""

    def __init__(self) -> None:
        super().__init__()
        self._ticks = iter(range(1000, 100000))

    def time(self) -> float:
        return float(next(self._ticks))


@pytest.fixture
def env():
    coord = FakeCoord()
    store = TaskStore(coord, TickingClock())
    return coord, store


def run_sync(runner: TaskRunner, token: int) -> None:
    runner.start()
    runner.poll(token)
    assert runner._pool is not None
    runner._pool.shutdown(wait=True)
    runner._pool = None


def test_submit_validates_and_persists(env):
    _, store = env
    reg = {"steps": Steps()}
    with pytest.raises(InvalidSpec):
        store.submit("nope", {}, reg)
    with pytest.raises(InvalidSpec):
        store.submit("steps", {}, reg)
    t = store.submit("steps", {"n": 2}, reg)
    loaded, version = store.load(t.id)
    assert loaded == t and version == 0 and loaded.state == TaskState.QUEUED
    with pytest.raises(NotFound):
        store.load("missing")


def test_a_submission_with_its_own_id_is_idempotent(env):
    _, store = env
    reg = {"steps": Steps()}
    tid = "1764117600000-0a1b2c3d"
    first = store.submit("steps", {"n": 2}, reg, task_id=tid, submitted_by="cert:a")
    again = store.submit("steps", {"n": 2}, reg, task_id=tid, submitted_by="cert:a")
    assert again == first and len(store.all()) == 1  # sent twice, queued once
    with pytest.raises(Conflict):
        store.submit("steps", {"n": 3}, reg, task_id=tid, submitted_by="cert:a")
    with pytest.raises(InvalidSpec) as exc:
        store.submit("steps", {"n": 2}, reg, task_id="../../etc")
    assert exc.value.field == "id"


def test_the_leader_runs_a_task_to_success(env):
    coord, store = env
    h = Steps()
    t = store.submit("steps", {"n": 3})
    coord.token = 7
    run_sync(TaskRunner(coord, store, {"steps": h}, "c1"), 7)
    done, _ = store.load(t.id)
    assert done.state == TaskState.SUCCEEDED and done.result == {"done": 3}
    assert done.owner == "c1" and done.owner_token == 7 and done.attempts == 1
    assert h.effects == ["s0", "s1", "s2"] and done.finished_at is not None


def test_a_follower_cannot_claim(env):
    coord, store = env
    t = store.submit("steps", {"n": 1})
    runner = TaskRunner(coord, store, {"steps": Steps()}, "c1")
    runner.start()
    with pytest.raises(NotLeader):
        runner.poll(1)
    runner.stop()
    assert store.load(t.id)[0].state == TaskState.QUEUED


def test_a_new_leader_resumes_without_repeating_recorded_steps(env):
    coord, store = env
    t = store.submit("steps", {"n": 3})
    task, v = store.load(t.id)
    # The old leader (token 1) recorded s0 and died while running.
    coord.token = 1
    store.write(replace(task, state=TaskState.RUNNING, owner="old", owner_token=1, attempts=1,
                        steps_done={"s0": "s0"}), v, fenced=True)
    coord.token = 2
    h = Steps()
    runner = TaskRunner(coord, store, {"steps": h}, "new")
    assert runner.recover(2) == [t.id]
    requeued = store.load(t.id)[0]
    assert requeued.state == TaskState.QUEUED and "old" in requeued.message
    run_sync(runner, 2)
    done = store.load(t.id)[0]
    assert done.state == TaskState.SUCCEEDED and done.attempts == 2
    assert h.effects == ["s1", "s2"]  # s0 was not done again


def test_a_task_that_cannot_resume_fails_with_the_reason(env):
    coord, store = env
    h = Steps()
    h.resumable = False
    t = store.submit("steps", {"n": 1})
    task, v = store.load(t.id)
    coord.token = 1
    store.write(replace(task, state=TaskState.RUNNING, owner="old", owner_token=1), v,
                fenced=True)
    coord.token = 2
    TaskRunner(coord, store, {"steps": h}, "new").recover(2)
    failed = store.load(t.id)[0]
    assert failed.state == TaskState.FAILED
    assert "leader old (token 1) stopped" in failed.error and "not resumable" in failed.error


def test_too_many_attempts_fail(env):
    coord, store = env
    t = store.submit("steps", {"n": 1})
    task, v = store.load(t.id)
    coord.token = 5
    store.write(replace(task, state=TaskState.RUNNING, owner="old", owner_token=4,
                        attempts=3), v, fenced=True)
    TaskRunner(coord, store, {"steps": Steps()}, "new").recover(5)
    assert "3 attempts" in store.load(t.id)[0].error


def test_a_failing_step_fails_the_task(env):
    coord, store = env
    t = store.submit("steps", {"n": 3})
    coord.token = 1
    run_sync(TaskRunner(coord, store, {"steps": Steps(fail_at="s1")}, "c"), 1)
    failed = store.load(t.id)[0]
    assert failed.state == TaskState.FAILED and failed.error == "s1 broke"
    assert list(failed.steps_done) == ["s0"]


def test_losing_leadership_mid_task_leaves_it_for_the_next_leader(env):
    coord, store = env
    h = Steps()
    h.gate = threading.Event()
    t = store.submit("steps", {"n": 3})
    coord.token = 1
    runner = TaskRunner(coord, store, {"steps": h}, "c")
    runner.start()
    runner.poll(1)
    coord.token = None  # session lost while s1 is in progress
    h.gate.set()
    assert runner._pool is not None
    runner._pool.shutdown(wait=True)
    left = store.load(t.id)[0]
    assert left.state == TaskState.RUNNING and list(left.steps_done) == ["s0"]


def test_cancel_queued_now_and_running_at_the_next_step(env):
    coord, store = env
    q = store.submit("steps", {"n": 1})
    assert store.cancel(q.id).state == TaskState.CANCELLED
    with pytest.raises(Conflict):
        store.cancel(q.id)
    h = Steps()
    h.gate = threading.Event()
    r = store.submit("steps", {"n": 3})
    coord.token = 1
    runner = TaskRunner(coord, store, {"steps": h}, "c")
    runner.start()
    runner.poll(1)
    store.cancel(r.id)
    h.gate.set()
    assert runner._pool is not None
    runner._pool.shutdown(wait=True)
    done = store.load(r.id)[0]
    assert done.state == TaskState.CANCELLED and h.effects == ["s0", "s1"]
    assert list(done.steps_done) == ["s0", "s1"]  # the step in flight was still recorded


def test_wait_returns_the_end_or_times_out(env):
    _, store = env
    t = store.submit("steps", {"n": 1})

    from ahvlite.errors import OperationTimeout
    with pytest.raises(OperationTimeout):
        store.wait(t.id, 1)
    assert store.clock.monotonic() >= 1  # it waited its second (on the fake clock)
    store.cancel(t.id)
    assert store.wait(t.id, 1).state == TaskState.CANCELLED


def test_task_json_round_trips():
    t = Task(id="1", kind="k", params={"a": [1, 2]}, steps_done={"s": {"x": 1}})
    assert Task.from_json(t.to_json()) == t


def test_own_orphans_after_a_suspended_connection_are_resumed(env):
    coord, store = env
    t = store.submit("steps", {"n": 1})
    task, v = store.load(t.id)
    coord.token = 3
    store.write(replace(task, state=TaskState.RUNNING, owner="c", owner_token=3, attempts=1),
                v, fenced=True)
    runner = TaskRunner(coord, store, {"steps": Steps()}, "c")
    assert runner.recover(3) == [t.id]  # same token, but no worker of ours runs it
    assert store.load(t.id)[0].state == TaskState.QUEUED


@pytest.mark.parametrize(("raw", "why"), [
    (b"", "JSON"), (b"\xff\xfe", "JSON"), (b"{", "JSON"), (b"[]", "a JSON object"),
    (b"null", "a JSON object"), (b'"x"', "a JSON object"), (b"[" * 100000, "JSON"),
    (b'{"id": "T", "kind": "k"}', "params"),
    (b'{"id": "T", "kind": "k", "params": {}, "colour": "red"}', "'colour' is not one"),
    (b'{"id": "T", "kind": "k", "params": {}, "state": "paused"}', "state"),
    (b'{"id": "T", "kind": "k", "params": {}, "attempts": "1"}', "attempts"),
    (b'{"id": "T", "kind": "k", "params": {}, "attempts": true}', "attempts"),
    (b'{"id": "T", "kind": "k", "params": []}', "params"),
    (b'{"id": "other", "kind": "k", "params": {}}', "is not its key"),
])
def test_records_that_do_not_decode_become_failed_stand_ins(raw, why):
    task, problem = decode("T", raw)
    assert problem is not None and why in problem
    assert task.id == "T" and task.state == TaskState.FAILED and task.error == problem
    assert Task.from_json(task.to_json()) == task  # the stand-in itself decodes
    if why != "is not its key":
        with pytest.raises(InvalidSpec):
            Task.from_json(raw)


def test_stand_ins_keep_what_they_can():
    raw = (b'{"id": "T", "kind": "sleep", "params": {"steps": 1}, "created_at": 5, '
           b'"priority": 9}')
    task, _ = decode("T", raw)
    assert (task.kind, task.params, task.created_at) == ("sleep", {"steps": 1}, 5.0)
    assert task.result == {"record": raw.decode()}


def test_the_leader_fails_bad_records_and_runs_the_rest(env):
    coord, store = env
    coord.put("tasks/0001-bad", b"\x00garbage", MUST_NOT_EXIST)
    newer = json.loads(Task(id="0002-new", kind="steps", params={"n": 1}).to_json())
    coord.put("tasks/0002-new", json.dumps({**newer, "lane": "fast"}).encode(), MUST_NOT_EXIST)

    class Buggy(Steps):
        def validate(self, params):
            return {"n": params["n"] + 1}  # TypeError on a string

    good = store.submit("steps", {"n": 2})
    odd = store.submit("buggy", {"n": "x"})
    shown = {t.id: t.state for t, _ in store.all()}  # shown failed before any leader acts
    assert shown["0001-bad"] == shown["0002-new"] == TaskState.FAILED
    coord.token = 1
    run_sync(TaskRunner(coord, store, {"steps": Steps(), "buggy": Buggy()}, "c1"), 1)
    assert store.load(good.id)[0].state == TaskState.SUCCEEDED
    odd_end = store.load(odd.id)[0]
    assert odd_end.state == TaskState.FAILED and "TypeError" in odd_end.error
    for task_id in ("0001-bad", "0002-new"):
        written = Task.from_json(coord.get(f"tasks/{task_id}").value)  # decodes now
        assert written.state == TaskState.FAILED and written.finished_at is not None
    assert "'lane' is not one" in store.load("0002-new")[0].error


def test_a_result_that_is_not_json_fails_its_task_with_the_reason(env):
    coord, store = env

    class Odd(Steps):
        def run(self, ctx):
            return {"when": object()}

    t = store.submit("odd", {"n": 0})
    coord.token = 1
    run_sync(TaskRunner(coord, store, {"odd": Odd()}, "c1"), 1)
    end = store.load(t.id)[0]
    assert end.state == TaskState.FAILED and "could not be recorded" in end.error
