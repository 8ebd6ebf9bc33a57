"""A host link through a network partition: noticed, reconnected after heal, and the
host monitor does not hang on the cut-off host."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ahvlite.cluster.legacy import open_cluster_file as load_cluster
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.controller.hostmon import HostMonitor, read_hosts
from ahvlite.lab import faults, lab
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
    mon = HostMonitor(coord, links, interval_s=0.5, call_timeout_s=3)  # type: ignore[arg-type]
    mon.start()
    # No second thread calls through the link's connection: two threads on one
    # connection that breaks mid-call can crash libvirt's client (a segfault took this
    # whole test run down once), which is why HA opens its own connections. The
    # monitor's one worker per host is the link's only caller, as in the controller.
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
            # h1 is untouched and still sampled while h2 is cut off
            sampled = len(mon.history.series("h1"))
            assert wait_for(lambda: len(mon.history.series("h1")) > sampled + 2)
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
        sampled = len(mon.history.series("h2"))
        assert wait_for(lambda: len(mon.history.series("h2")) > sampled, timeout_s=30)
    finally:
        mon.stop()
        coord.close()
