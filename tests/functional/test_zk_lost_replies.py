"""Lost replies on a real ZooKeeper: a command applied, its reply lost, kazoo's retry
sends it again. Our own code path is wrapped so the first send raises ConnectionLoss
right after ZooKeeper applied it; the ensemble itself is real and applies every op."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from kazoo.exceptions import ConnectionLoss

from ahvlite.controller.coord import MUST_NOT_EXIST, Put, VersionMismatch, open_store
from ahvlite.controller.coord.api import Delete
from ahvlite.controller.tasks import Task, TaskRunner, TaskState, TaskStore
from ahvlite.errors import Conflict
from tests.waiting import wait_for

pytestmark = pytest.mark.functional


@pytest.fixture
def coord(zk):
    c = open_store(zk.url(f"l{uuid.uuid4().hex[:8]}"))
    yield c
    c.close()


@pytest.fixture
def leader(coord):
    elected = threading.Event()
    coord.campaign("me", lambda t: elected.set(), lambda r: None)
    assert elected.wait(10)
    return coord


class LosingTransaction:
    """A kazoo transaction whose commit is applied, then its reply "lost"."""

    def __init__(self, real: Any, lost: list[int]) -> None:
        self.real, self.lost = real, lost

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def commit(self) -> Any:
        results = self.real.commit()
        if self.lost[0]:
            self.lost[0] -= 1
            raise ConnectionLoss()
        return results


def lose_replies(monkeypatch, coord, n: int = 1) -> list[int]:
    client = coord._client
    real = client.transaction
    lost = [n]
    monkeypatch.setattr(client, "transaction", lambda: LosingTransaction(real(), lost))
    return lost


def lose_create_reply(monkeypatch, coord) -> list[int]:
    client = coord._client
    real = client.create
    lost = [1]

    def create(*args: Any, **kw: Any) -> Any:
        out = real(*args, **kw)
        if lost[0]:
            lost[0] -= 1
            raise ConnectionLoss()
        return out

    monkeypatch.setattr(client, "create", create)
    return lost


def test_a_retried_fenced_write_recognises_its_own_commit(leader, monkeypatch):
    leader.put("tasks/a", b"v0", MUST_NOT_EXIST)
    leader.put("tasks/gone", b"x", MUST_NOT_EXIST)
    lost = lose_replies(monkeypatch, leader)
    leader.fenced([Put("tasks/a", b"v1", 0), Put("tasks/new", b"n", MUST_NOT_EXIST),
                   Delete("tasks/gone", 0)])
    assert lost == [0]  # the first send was applied and its reply dropped
    got = leader.get("tasks/a")
    assert (got.value, got.version) == (b"v1", 1)
    assert leader.get("tasks/new").version == 0 and leader.get("tasks/gone") is None


def test_a_retry_that_finds_someone_elses_write_still_fails(leader, zk, monkeypatch):
    leader.put("tasks/b", b"v0", MUST_NOT_EXIST)
    client = leader._client
    real = client.transaction
    sent = [0]

    class LostBeforeApplied:
        def __init__(self, t: Any) -> None:
            self.t = t

        def __getattr__(self, name: str) -> Any:
            return getattr(self.t, name)

        def commit(self) -> Any:
            sent[0] += 1
            if sent[0] == 1:  # never reached ZooKeeper; meanwhile another writer acts
                leader.put("tasks/b", b"theirs", 0)
                raise ConnectionLoss()
            return self.t.commit()

    monkeypatch.setattr(client, "transaction", lambda: LostBeforeApplied(real()))
    with pytest.raises(VersionMismatch):
        leader.fenced([Put("tasks/b", b"mine", 0)])
    assert leader.get("tasks/b").value == b"theirs"


def test_a_retried_put_and_delete_recognise_their_own_success(coord, monkeypatch):
    coord.put("k/a", b"v0", MUST_NOT_EXIST)
    client = coord._client
    for name in ("set", "delete"):
        real = getattr(client, name)
        lost = [1]

        def once(*args: Any, _real: Any = real, _lost: list[int] = lost, **kw: Any) -> Any:
            out = _real(*args, **kw)
            if _lost[0]:
                _lost[0] -= 1
                raise ConnectionLoss()
            return out

        monkeypatch.setattr(client, name, once)
    assert coord.put("k/a", b"v1", 0) == 1
    coord.delete("k/a", 1)
    assert coord.get("k/a") is None


def test_a_retried_join_finds_its_own_member(coord, zk, monkeypatch):
    lose_create_reply(monkeypatch, coord)
    coord.join("ctl1", b"{}")
    assert "ctl1" in coord.members()
    monkeypatch.undo()
    other = open_store(coord_url(coord, zk))
    try:
        with pytest.raises(Conflict, match="already in use"):
            other.join("ctl1", b"{}")  # another session's member is still a conflict
    finally:
        other.close()


def coord_url(coord, zk) -> str:
    return zk.url(coord.root.strip("/"))


def test_a_claim_whose_reply_was_lost_still_runs_its_task(leader, monkeypatch):
    store = TaskStore(leader)
    task = store.submit("sleep", {"steps": 1})

    class Quick:
        resumable = True

        def validate(self, params: dict[str, Any]) -> dict[str, Any]:
            return params

        def run(self, ctx: Any) -> dict[str, Any]:
            return {"ok": True}

    token = leader.check_leader()
    runner = TaskRunner(leader, store, {"sleep": Quick()}, "me")
    runner.start()
    lose_replies(monkeypatch, leader)  # the claim's reply is lost
    try:
        assert runner.poll(token) == [task.id]
        end = wait_for(lambda: (t := store.load(task.id)[0]).terminal and t, 10)
    finally:
        runner.stop()
    assert isinstance(end, Task) and end.state == TaskState.SUCCEEDED and end.attempts == 1
