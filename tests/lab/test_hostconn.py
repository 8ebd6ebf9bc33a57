"""A host link through a network partition: noticed, reconnected after heal, and the
host monitor goes on with the other hosts meanwhile."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ahvlite.cluster.legacy import open_cluster_file as load_cluster
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.controller.hostmon import HostMonitor, read_hosts
from ahvlite.lab import faults, lab
from ahvlite.sched.stats import HostStats
from ahvlite.spec.lab import LabSpec
from ahvlite.virt.hostconn import HostConnection, LinkState
from tests.waiting import wait_for

NAME = "thc"
SUBNET = "10.213.255.0/26"
INTERVAL_S, COUNT = 2, 2


@pytest.fixture(scope="module")
def cluster():
    status = lab.up(LabSpec(name=NAME, hosts=2, subnet=SUBNET))
    yield load_cluster(Path(status["cluster_file"]))
    lab.down(NAME)


def test_a_partitioned_host_is_noticed_and_reconnected_after_heal(cluster, tmp_path):
    coord = SqliteCoordinator(tmp_path / "c.db")
    elected = threading.Event()
    coord.campaign("me", lambda t: elected.set(), lambda r: None)
    assert elected.wait(5)
    links = [HostConnection(h, cluster.host(h).uri, keepalive_interval_s=INTERVAL_S,
                            keepalive_count=COUNT, connect_timeout_s=3) for h in ("h1", "h2")]
    h2 = links[1]
    changes = []
    h2.on_state(changes.append)
    # The VM lists come from what each host's own controller published (here: a fresh
    # record every round); the monitor itself makes no call through the links, whose
    # only callers are keepalive and events. (Two threads on one connection that breaks
    # mid-call can crash libvirt's client, which is why HA opens its own connections.)
    mon = HostMonitor(coord, links, interval_s=0.5,  # type: ignore[arg-type]
                      latest=lambda h: HostStats(h, time.time(), 1.0, 2, 1.0, None, None,
                                                 None, ()))
    mon.start()

    def published(host: str) -> int:
        got = coord.get(f"hosts/{host}")
        return got.version if got is not None else -1

    try:
        assert wait_for(lambda: [h["state"] for h in read_hosts(coord)]
                        == ["connected", "connected"], timeout_s=30)
        cut_at = time.monotonic()
        faults.partition(NAME, "h2")
        try:
            # keepalive gives up after interval x (count + 1); the margin is for a busy box
            limit_s = INTERVAL_S * (COUNT + 1) + 10
            assert wait_for(lambda: h2.state == LinkState.DISCONNECTED, timeout_s=limit_s)
            assert h2.conn is None
            lost = [c for c in changes if c.state == LinkState.DISCONNECTED]
            assert len(lost) == 1 and lost[0].at_monotonic - cut_at <= limit_s
            assert wait_for(lambda: read_hosts(coord)[1]["state"] == "disconnected")
            # h1 is untouched and still refreshed while h2 is cut off
            before = published("h1")
            assert wait_for(lambda: published("h1") > before + 2)
            time.sleep(INTERVAL_S * 2)  # failed reconnects must not repeat "disconnected"
            assert len([c for c in changes if c.state == LinkState.DISCONNECTED]) == 1
        finally:
            faults.heal(NAME, "h2")
        assert h2.wait_connected(60), h2.last_error
        assert [c.state for c in changes][-2:] == [LinkState.DISCONNECTED,
                                                    LinkState.CONNECTED]
        conn = h2.conn
        assert conn is not None and isinstance(conn.listAllDomains(), list)
        assert wait_for(lambda: read_hosts(coord)[1]["state"] == "connected", timeout_s=30)
        before = published("h2")
        assert wait_for(lambda: published("h2") > before, timeout_s=30)
    finally:
        mon.stop()
        coord.close()
