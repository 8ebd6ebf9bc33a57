"""The embedded store (a real SQLite file in a temp dir) and store URL parsing."""

from __future__ import annotations

import threading
import time

import pytest

from ahvlite.controller.coord import MUST_NOT_EXIST, NotLeader, Put, VersionMismatch
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.controller.coord.url import SqliteUrl, ZkUrl, parse_store_url
from ahvlite.errors import Conflict, HostUnreachable, InvalidSpec, OperationTimeout
from tests.waiting import wait_for


@pytest.fixture
def make(tmp_path):
    opened = []

    def factory(**kw):
        c = SqliteCoordinator(tmp_path / "c.db", **kw)
        opened.append(c)
        return c

    yield factory
    for c in opened:
        c.close()




def test_versions_cas_children_and_transactions(make):
    c = make()
    assert c.put("tasks/1", b"a", MUST_NOT_EXIST) == 0
    with pytest.raises(VersionMismatch):
        c.put("tasks/1", b"b", MUST_NOT_EXIST)
    assert c.put("tasks/1", b"b", 0) == 1
    c.put("tasks/2", b"c")
    c.put("tasks/2/sub", b"deeper")
    assert {k: v.value for k, v in c.children("tasks").items()} == {"1": b"b", "2": b"c"}
    with pytest.raises(VersionMismatch):
        c.transaction([Put("tasks/3", b"x"), Put("tasks/1", b"y", 0)])
    assert c.get("tasks/3") is None


def test_one_leader_per_database_and_fencing_tokens_grow(make):
    a, b = make(), make()
    got: dict[str, int] = {}
    a.campaign("a", lambda t: got.setdefault("a", t), lambda r: None)
    assert wait_for(lambda: "a" in got)
    b.campaign("b", lambda t: got.setdefault("b", t), lambda r: None)
    time.sleep(0.3)
    assert "b" not in got and a.leader().identity == "a"
    with pytest.raises(NotLeader):
        b.fenced([Put("k", b"b")])
    a.fenced([Put("k", b"a")])
    a.resign()
    assert wait_for(lambda: "b" in got) and got["b"] > got["a"]
    with pytest.raises(NotLeader):
        a.fenced([Put("k", b"stale")])


def test_members_expire_without_their_session(make):
    a = make(session_timeout_s=1)
    b = make(session_timeout_s=1)
    a.join("x", b"1")
    b.join("y", b"2")
    assert a.members() == {"x": b"1", "y": b"2"}
    with pytest.raises(Conflict):
        b.join("x", b"dup")
    b._closed.set()  # its refresher stops, like a dead process
    assert wait_for(lambda: a.members() == {"x": b"1"}, 3)


def test_refuses_a_controller_on_another_machine(tmp_path):
    SqliteCoordinator(tmp_path / "c.db", machine="machine-a").close()
    with pytest.raises(Conflict, match="another machine"):
        SqliteCoordinator(tmp_path / "c.db", machine="machine-b")


def test_lock_and_missing_directory(make, tmp_path):
    a, b = make(), make()
    with a.lock("h1", 1), pytest.raises(OperationTimeout), b.lock("h1", 0.2):
        pass
    with pytest.raises(HostUnreachable):
        SqliteCoordinator(tmp_path / "nope" / "c.db")


def test_watch_reports_changes(make):
    c = make()
    seen = []
    done = threading.Event()

    def cb(v):
        seen.append(v and v.value)
        if v and v.value == b"2":
            done.set()

    cancel = c.watch("w", cb)
    c.put("w", b"1")
    time.sleep(0.25)
    c.put("w", b"2")
    assert done.wait(3)
    cancel()
    assert seen[0] is None


@pytest.mark.parametrize("url,expected", [
    ("sqlite:///var/lib/ahvlite/c.db", "sqlite:///var/lib/ahvlite/c.db"),
    ("zk://h1:2181,h2:2182/ahvlite", "zk://ahvlite:***@h1:2181,h2:2182/ahvlite"),
    ("zk://u:s@h1/a/b", "zk://u:***@h1:2181/a/b"),
])
def test_store_urls(url, expected):
    assert parse_store_url(url, env={}).redacted() == expected


def test_zk_credentials_from_the_environment():
    u = parse_store_url("zk://h:1/x", env={"AHVLITE_ZK_AUTH": "me:pw"})
    assert isinstance(u, ZkUrl) and (u.user, u.secret) == ("me", "pw")
    assert isinstance(parse_store_url("sqlite:///a", env={}), SqliteUrl)


@pytest.mark.parametrize("bad", ["sqlite://relative", "zk://h1:2181", "zk://h1:x/a",
                                 "etcd://h/a", "zk://u@h/a", "zk://h:2181/a/"])
def test_bad_store_urls_name_the_field(bad):
    with pytest.raises(InvalidSpec) as err:
        parse_store_url(bad, env={})
    assert err.value.field == "store" and "sqlite:///" in err.value.allowed


@pytest.mark.parametrize("url", [
    "zk://u:s3cr3t@h1:x/a", "zk://u:s3cr3t@h1", "zk://u:s3cr3t@/a", "zk://s3cr3t@h1/a",
    "zk://u:s3/cr3t@h1/a", "zk://u:s3cr3t@h1:2181/a/", "zk://u:s3c@r3t@h1:99999/a",
])
def test_no_error_about_a_store_url_shows_its_secret(url):
    with pytest.raises(InvalidSpec) as err:
        parse_store_url(url, env={})
    text = f"{err.value.message} {err.value.hint}"
    assert "s3" not in text and "cr3t" not in text and "***" in text, text


def test_the_default_credential_is_refused_for_a_controller():
    from ahvlite.controller.coord.url import refuse_default_auth

    for url, env in (("zk://h1/a", {}), ("zk://ahvlite:ahvlite@h1/a", {}),
                     ("zk://h1/a", {"AHVLITE_ZK_AUTH": "ahvlite:ahvlite"})):
        with pytest.raises(InvalidSpec) as err:
            refuse_default_auth(parse_store_url(url, env=env))
        assert "ahvlite:ahvlite" not in err.value.message and "AHVLITE_ZK_AUTH" in (
            err.value.hint or "")
    refuse_default_auth(parse_store_url("zk://ahvlite:mine@h1/a", env={}))
    refuse_default_auth(parse_store_url("sqlite:///var/lib/ahvlite/c.db", env={}))
