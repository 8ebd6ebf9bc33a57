"""The controller loop: act only while elected, start/stop leader services, announce."""

from __future__ import annotations

import json
import threading

import pytest

from ahvlite.clock import FakeClock
from ahvlite.controller.daemon import LEADER_KEY, Controller, Identity
from ahvlite.controller.kinds import registry
from ahvlite.controller.tasks import TaskState
from tests.unit.test_tasks import FakeCoord


class ElectionFake(FakeCoord):
    def __init__(self) -> None:
        super().__init__()
        self.members_: dict[str, bytes] = {}
        self.on_elected = self.on_lost = None
        self.closed = False

    def join(self, member, data):
        self.members_[member] = data

    def update_member(self, member, data):
        self.members_[member] = data

    def leave(self, member):
        self.members_.pop(member, None)

    def members(self):
        return dict(self.members_)

    def campaign(self, identity, on_elected, on_lost):
        self.on_elected, self.on_lost = on_elected, on_lost

    def resign(self):
        self.token = None

    def close(self):
        self.closed = True


class Svc:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def start(self) -> None:
        self.log.append("start")

    def stop(self) -> None:
        self.log.append("stop")


def test_controller_acts_only_while_elected():
    coord = ElectionFake()
    log: list[str] = []
    ctl = Controller(coord, Identity("c1", "h", 42), registry(), clock=FakeClock(wall=100.0),
                     leader_services=lambda: [Svc(log)])
    ctl.coord.join("c1", ctl._member_data())
    ctl._tick()
    assert coord.get(LEADER_KEY) is None and log == []  # not elected: nothing happens

    task = ctl.store.submit("sleep", {"steps": 1, "step_s": 0}, registry())
    coord.token = 5
    ctl._on_elected(5)
    ctl._tick()
    announced = json.loads(coord.get(LEADER_KEY).value)
    assert announced == {"name": "c1", "host": "h", "pid": 42, "token": 5, "acted_at": 100.0}
    assert log == ["start"] and json.loads(ctl._member_data())["leader"] is True
    assert ctl.store.load(task.id)[0].state in (TaskState.RUNNING, TaskState.SUCCEEDED)

    coord.token = None  # the session is gone: step down at the next tick
    ctl._on_lost("session lost")
    ctl._tick()
    assert log == ["start", "stop"] and ctl._acting is None


def test_run_leaves_and_closes_on_stop():
    coord = ElectionFake()
    stop = threading.Event()
    stop.set()
    Controller(coord, Identity("c1", "h", 1), registry()).run(stop)
    assert coord.members() == {} and coord.closed and coord.on_elected is not None


class Flaky:
    """A leader service whose start fails the first ``fails`` times."""

    def __init__(self, log: list[str], fails: int) -> None:
        self.log, self.fails = log, fails

    def start(self) -> None:
        if self.fails:
            self.fails -= 1
            raise RuntimeError("service bug")
        self.log.append("start")

    def stop(self) -> None:
        self.log.append("stop")


def test_the_leader_loop_survives_any_exception_and_backs_off(monkeypatch):
    coord = ElectionFake()
    log: list[str] = []
    flaky = Flaky(log, fails=2)
    ctl = Controller(coord, Identity("c1", "h", 42), registry(), clock=FakeClock(wall=100.0),
                     poll_s=0.2, leader_services=lambda: [Svc(log), flaky])
    coord.token = 5
    ctl._on_elected(5)
    ctl._tick()  # the second service's start fails: nothing raised, the loop backs off
    assert ctl._acting is None and ctl._pause_s() == 0.4
    ctl._tick()
    assert ctl._pause_s() == 0.8 and log == ["start", "stop", "start"]
    ctl._tick()  # the start is tried afresh each time; never two of a service running
    assert ctl._acting == 5 and ctl._pause_s() == 0.2
    assert log == ["start", "stop", "start", "stop", "start", "start"]

    calls = []

    def broken_poll(token):
        calls.append(token)
        raise TypeError("a bug in the runner")

    monkeypatch.setattr(ctl.runner, "poll", broken_poll)
    for _ in range(8):
        ctl._tick()
    assert len(calls) == 8 and ctl._pause_s() == 5.0  # capped
    monkeypatch.undo()
    ctl._tick()
    assert ctl._pause_s() == 0.2 and ctl._acting == 5


def test_a_production_controller_refuses_drill_kinds_with_the_reason():
    from ahvlite.controller.tasks import TaskRunner, TaskStore
    from ahvlite.errors import InvalidSpec
    from tests.unit.test_tasks import run_sync

    prod, lab = registry(drills=False), registry(drills=True)
    assert lab["sleep"].validate({"steps": 2}) == {"steps": 2, "step_s": 0.1}
    coord = FakeCoord()
    store = TaskStore(coord, FakeClock(wall=100.0))
    with pytest.raises(InvalidSpec) as exc:  # submitted through a production API
        store.submit("sleep", {"steps": 1}, prod)
    assert exc.value.field == "kind" and "only by a controller in a lab" in exc.value.message
    with pytest.raises(InvalidSpec) as exc:  # a mistyped kind: drill kinds not offered
        store.submit("slep", {}, prod)
    assert "vm.migrate" in exc.value.allowed and "sleep" not in exc.value.allowed
    # A record written straight into the store: the leader fails it, never runs it.
    for kind, params in (("sleep", {"steps": 1, "step_s": 0}),
                         ("vm.create", {"host": "h1", "name": "m1"})):
        task = store.submit(kind, params)
        coord.token = 3
        run_sync(TaskRunner(coord, store, prod, "c1"), 3)
        end = store.load(task.id)[0]
        assert end.state == TaskState.FAILED and end.attempts == 1
        assert end.error == (f"kind={kind!r} is not valid: a drill kind, run only by a "
                             "controller in a lab")
