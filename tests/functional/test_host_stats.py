"""Stats where they arise: every controller publishes its own host's stats
(``stats/HOST``, from its local libvirt: here the test driver), the leader's feed reads
them back (ADS history) instead of polling hosts; two real controller processes on one
SQLite store, and `ahvlite stats` through the API of one of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ahvlite.cluster.state import ClusterState
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.controller.hoststats import OwnStats, StatsFeed, read_records
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.virt.conn import open_connection
from tests.apicluster import client_env, make_pki
from tests.clirun import ahvlite
from tests.waiting import wait_for

pytestmark = pytest.mark.functional

SPEC = ClusterSpec(name="hstats", hosts=[HostSpec(name=h, uri="test:///default")
                                         for h in ("h1", "h2")])


def test_own_stats_publish_only_for_a_host_and_the_feed_keeps_new_fresh_records(tmp_path):
    coord = SqliteCoordinator(tmp_path / "c.db")
    hosts = {"h1"}
    now = [1000.0]
    own = OwnStats(coord, "h1", lambda: open_connection("test:///default"),
                   is_host=lambda h: h in hosts, clock=lambda: now[0])
    try:
        assert own.collect_once() and own.collect_once()
        rec = read_records(coord)["h1"]
        assert rec.host == "h1" and rec.cpus == 16 and rec.interval_s is not None
        assert "test" in [v.name for v in rec.vms]
        hosts.clear()  # removed from the cluster: nothing more is published
        before = coord.get("stats/h1").version
        assert not own.collect_once() and coord.get("stats/h1").version == before

        feed = StatsFeed(coord, max_age_s=60, clock=lambda: now[0])
        assert feed.refresh() == 1 and feed.refresh() == 0  # the same record once
        hosts.add("h1")
        now[0] += 10
        own.collect_once()
        assert feed.refresh() == 1 and len(feed.history.series("h1")) == 2
        assert feed.records(SPEC)["h1"][-1]["at"] == 1010.0 and feed.records(SPEC)["h2"] == []
        # Untrusted records: one that does not parse, or names another host, is left out.
        coord.put("stats/h2", b"{not json")
        coord.put("stats/h3", json.dumps({**rec.to_dict(), "host": "h1"}).encode())
        coord.put("stats/h4", json.dumps({**rec.to_dict(), "host": "h4",
                                          "cpus": "many"}).encode())
        assert sorted(read_records(coord)) == ["h1"] and feed.refresh() == 0
        now[0] += 61  # its controller stopped: the record is too old to count
        assert feed.latest("h1") is None and feed.refresh() == 0
    finally:
        own.stop()
        coord.close()


def test_a_stuck_libvirt_call_is_abandoned_and_the_loop_goes_on(tmp_path):
    coord = SqliteCoordinator(tmp_path / "c.db")
    release = threading.Event()
    calls = []

    def sampler(conn):
        calls.append(conn)
        release.wait(5)
        raise AssertionError("not reached in time")

    own = OwnStats(coord, "h1", lambda: open_connection("test:///default"),
                   sampler=sampler, call_timeout_s=0.3)
    try:
        t0 = time.monotonic()
        assert not own.collect_once()  # timed out
        assert not own.collect_once()  # the call still pending: no second call on it
        assert time.monotonic() - t0 < 3 and len(calls) == 1
        assert coord.children("stats") == {}
    finally:
        release.set()
        own.stop()
        coord.close()


def controller(tmp_path, name: str, store: str, api: list[str]) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "ahvlite.cli.main", "controller", "run", "--store", store,
         "--name", name, "--libvirt-uri", "test:///default", "--stats-interval", "1",
         "--session-timeout", "2", *api],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})


def test_two_controllers_each_publish_their_own_host(tmp_path):
    store = f"sqlite://{tmp_path}/store.db"
    setup = SqliteCoordinator(tmp_path / "store.db")
    ClusterState(setup).write_spec(SPEC, None)
    pki = make_pki(tmp_path / "pki")
    api = ["--api-listen", "127.0.0.1:0", "--api-cert", str(pki / "server.pem"),
           "--api-key", str(pki / "server-key.pem"), "--api-ca", str(pki / "ca.pem"),
           "--api-uploads", str(tmp_path / "uploads")]
    procs = [controller(tmp_path, "h1", store, api), controller(tmp_path, "h2", store, [])]
    try:
        # Each process has its own test driver: each record is its own host's sample.
        recs = wait_for(lambda: (r := read_records(setup)) and len(r) == 2
                        and all(x.interval_s for x in r.values()) and r, 90, 0.5)
        assert recs, [(tmp_path / f"{n}.log").read_text()[-2000:] for n in ("h1", "h2")]
        assert {h: r.host for h, r in recs.items()} == {"h1": "h1", "h2": "h2"}
        first = {h: r.at for h, r in recs.items()}
        assert wait_for(lambda: all(read_records(setup)[h].at > first[h] for h in first),
                        30, 0.5)
        url = wait_for(lambda: json.loads(setup.members().get("h1", b"{}")).get("api"), 30)
        out = ahvlite("stats", "--json", timeout_s=60, env=client_env(pki, url))
        assert out.returncode == 0, out.stderr
        assert [r["host"] for r in json.loads(out.stdout)] == ["h1", "h2"]
        # A controller on a host the cluster no longer has stops publishing it.
        ClusterState(setup).write_spec(ClusterSpec(name="hstats", hosts=SPEC.hosts[:1]),
                                       ClusterState(setup).spec_version())
        time.sleep(2)
        stopped = read_records(setup)["h2"].at
        time.sleep(3)
        assert read_records(setup)["h2"].at == stopped
        assert read_records(setup)["h1"].at > stopped
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        setup.close()


def test_one_connection_is_kept_between_rounds(tmp_path):
    coord = SqliteCoordinator(tmp_path / "c.db")
    opened = []

    def connect():
        conn = open_connection("test:///default")
        opened.append(conn)
        return conn

    own = OwnStats(coord, "h1", connect, interval_s=0.1)
    own.start()
    try:
        assert wait_for(lambda: own.published >= 3, 10, 0.05)
    finally:
        own.stop()
        coord.close()
    assert len(opened) == 1
