"""The ZooKeeper store against a real ZooKeeper (Debian's), one chroot per test."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.protocol.connection import _SESSION_EXPIRED
from kazoo.security import make_acl, make_digest_acl

from ahvlite.controller.coord import MUST_NOT_EXIST, NotLeader, Put, VersionMismatch, open_store
from ahvlite.controller.coord.api import Delete
from ahvlite.controller.tasks import TaskStore
from ahvlite.errors import AhvliteError, HostUnreachable, OperationTimeout
from ahvlite.lab.services import free_ports
from tests.waiting import wait_for

pytestmark = pytest.mark.functional


@pytest.fixture
def url(zk):
    return zk.url(f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
def coords(url):
    opened = []

    def make(**kw):
        c = open_store(url, **kw)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()




def test_keys_have_versions_and_compare_and_set(coords):
    c = coords()
    assert c.get("a/b") is None
    assert c.put("a/b", b"1", MUST_NOT_EXIST) == 0
    with pytest.raises(VersionMismatch):
        c.put("a/b", b"x", MUST_NOT_EXIST)
    assert c.put("a/b", b"2", 0) == 1
    with pytest.raises(VersionMismatch):
        c.put("a/b", b"3", 0)
    assert c.get("a/b").value == b"2" and c.get("a/b").version == 1
    c.put("a/c", b"3")
    assert {k: v.value for k, v in c.children("a").items()} == {"b": b"2", "c": b"3"}
    c.delete("a/c")
    assert list(c.children("a")) == ["b"]


def test_transaction_is_all_or_nothing(coords):
    c = coords()
    c.put("t/x", b"0")
    with pytest.raises(VersionMismatch):
        c.transaction([Put("t/y", b"new"), Put("t/x", b"1", 7)])
    assert c.get("t/y") is None and c.get("t/x").value == b"0"
    c.transaction([Put("t/y", b"new"), Put("t/x", b"1", 0), Delete("t/y")])
    assert c.get("t/y") is None and c.get("t/x").version == 1


def test_watch_follows_changes_in_order_to_the_latest(coords):
    c = coords()
    seen = []
    cancel = c.watch("w", lambda v: seen.append(None if v is None else v.value))
    c.put("w", b"1")
    c.put("w", b"2")
    assert wait_for(lambda: seen[-1:] == [b"2"])
    cancel()
    # ZooKeeper watches are one-shot and re-read on firing, so two quick writes may be
    # seen as one; what is guaranteed is order and the latest value, never a step back.
    assert seen[0] is None
    order = [None, b"1", b"2"]
    assert [order.index(v) for v in seen] == sorted(order.index(v) for v in seen)


def _stranger(zk, auth: str | None = None) -> KazooClient:
    client = KazooClient(zk.hosts, auth_data=[("digest", auth)] if auth else None)
    client.start(timeout=5)
    return client


@pytest.mark.parametrize("auth", [None, "ahvlite:not-the-secret", "intruder:x"])
def test_nobody_else_reads_lists_or_writes_anything(zk, coords, url, auth):
    c = coords()
    task = TaskStore(c).submit("vm.create", {"uri": "qemu:///system",
                                                        "name": "secret-vm"})
    c.join("ctl-a", b"A")
    chroot = "/" + url.rsplit("/", 1)[1]
    stranger = _stranger(zk, auth)
    try:
        for path in (chroot, f"{chroot}/kv", f"{chroot}/kv/tasks", f"{chroot}/members",
                     f"{chroot}/election", f"{chroot}/locks"):
            with pytest.raises(NoAuthError):
                stranger.get_children(path)
        for path in (f"{chroot}/kv/tasks/{task.id}", chroot, f"{chroot}/members/ctl-a"):
            with pytest.raises(NoAuthError):
                stranger.get(path)
        with pytest.raises(NoAuthError):
            stranger.set(f"{chroot}/kv/tasks/{task.id}", b"theirs")
        with pytest.raises(NoAuthError):
            stranger.create(f"{chroot}/kv/intruder", b"x")
    finally:
        stranger.stop()
        stranger.close()
    assert c.get(f"tasks/{task.id}").version == 0


def test_a_store_readable_by_the_world_is_tightened_when_a_controller_connects(zk, url):
    # What an older ahvlite left: every znode world-readable.
    chroot = "/" + url.rsplit("/", 1)[1]
    old = [make_digest_acl("ahvlite", "test-secret", all=True),
           make_acl("world", "anyone", read=True)]
    writer = _stranger(zk, "ahvlite:test-secret")
    try:
        for sub in ("kv/tasks/t1", "members", "election", "locks"):
            writer.create(f"{chroot}/{sub}", b"params", acl=old, makepath=True)
    finally:
        writer.stop()
        writer.close()
    open_store(url).close()
    stranger = _stranger(zk)
    try:
        with pytest.raises(NoAuthError):
            stranger.get(f"{chroot}/kv/tasks/t1")
        with pytest.raises(NoAuthError):
            stranger.get_children(chroot)
    finally:
        stranger.stop()
        stranger.close()


def test_a_wrong_credential_is_refused_at_once_and_never_shown(zk, url):
    open_store(url).close()  # the store exists, with its owner's ACL
    wrong = url.replace("test-secret", "hunter2-wrong")
    with pytest.raises(AhvliteError) as err:
        open_store(wrong).close()
    text = f"{err.value.message} {err.value.hint}"
    assert "refused our credentials" in text and "hunter2" not in text


def test_members_are_ephemeral(coords):
    a, b = coords(), coords()
    a.join("ctl-a", b"A")
    b.join("ctl-b", b"B")
    assert a.members() == {"ctl-a": b"A", "ctl-b": b"B"}
    b.close()
    assert a.members() == {"ctl-a": b"A"}


def test_one_leader_and_fencing_follows_the_election(coords):
    a, b = coords(), coords()
    elected = {}
    a.campaign("a", lambda t: elected.setdefault("a", t), lambda r: None)
    assert wait_for(lambda: "a" in elected)
    b.campaign("b", lambda t: elected.setdefault("b", t), lambda r: None)
    time.sleep(0.3)
    assert "b" not in elected and not b.is_leader()
    assert a.leader().identity == "a"
    with pytest.raises(NotLeader):
        b.fenced([Put("x", b"b")])
    a.fenced([Put("x", b"a")])
    a.resign()
    assert wait_for(lambda: "b" in elected)
    assert elected["b"] > elected["a"]  # fencing tokens only grow
    with pytest.raises(NotLeader):
        a.fenced([Put("x", b"stale")])
    b.fenced([Put("x", b"b")])
    assert a.get("x").value == b"b"


def test_expired_session_stops_the_leader_at_once(coords):
    """Expire the leader's session the way kazoo's own test harness does."""
    a, b = coords(session_timeout_s=2), coords(session_timeout_s=2)
    lost = threading.Event()
    a.campaign("a", lambda t: None, lambda r: lost.set())
    assert wait_for(a.is_leader)
    b_elected = threading.Event()
    b.campaign("b", lambda t: b_elected.set(), lambda r: None)
    a._client._call(_SESSION_EXPIRED, None)  # KazooTestHarness.expire_session
    assert wait_for(lambda: not a.is_leader(), 2)
    with pytest.raises(NotLeader):
        a.check_leader()
    with pytest.raises(NotLeader):
        a.fenced([Put("after-expiry", b"a")])
    assert lost.wait(10)
    assert b_elected.wait(10)
    b.fenced([Put("after-expiry", b"b")])
    assert b.get("after-expiry").value == b"b"


def test_lock_excludes_a_second_holder(coords):
    a, b = coords(), coords()
    with a.lock("host-h1", timeout_s=2), pytest.raises(OperationTimeout), \
            b.lock("host-h1", timeout_s=0.3):
        pass
    with b.lock("host-h1", timeout_s=2):
        pass


def test_unreachable_store_fails_clearly_within_the_timeout():
    port = free_ports(1)[0]
    start = time.monotonic()
    with pytest.raises(HostUnreachable) as err:
        open_store(f"zk://127.0.0.1:{port}/ahvlite", connect_timeout_s=1.5)
    assert time.monotonic() - start < 5
    assert f"127.0.0.1:{port}" in err.value.message and "1.5 s" in err.value.message


def test_a_parent_removed_behind_the_clients_back_is_made_again(coords):
    # The client remembers which parents it made; one removed since is made again.
    c, other = coords(), coords()
    c.transaction([Put("p/q/k1", b"1", MUST_NOT_EXIST)])
    other._client.delete(other._path("p/q"), recursive=True)  # another writer's doing
    c.transaction([Put("p/q/k2", b"2", MUST_NOT_EXIST)])
    assert c.names("p/q") == ["k2"]
