"""The host monitor on libvirt's test driver, publishing into a real SQLite store: link
state, lifecycle events, and the VM list refreshed from the stats the host's own
controller published (it polls no host for stats itself)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.controller.hostmon import HostMonitor, read_hosts
from ahvlite.sched.stats import HostStats, VmStats
from ahvlite.spec.smallguest import SimpleGuest
from ahvlite.virt import designer, guest
from ahvlite.virt.hostconn import HostConnection
from tests.waiting import wait_for

pytestmark = pytest.mark.functional




def published(host: str, at: float, vms: dict[str, str]) -> HostStats:
    return HostStats(host, at, 1.0, 2, 5.0, 3072.0, 100.0, 3.3,
                     tuple(VmStats(n, n, s, 1, 1.0, 64.0, 64.0, 0.0, 0.0, 0.0, 0.0)
                           for n, s in vms.items()))


def test_monitor_tracks_links_events_and_the_published_vm_list(tmp_path):
    coord = SqliteCoordinator(tmp_path / "c.db")
    elected = threading.Event()
    coord.campaign("me", lambda t: elected.set(), lambda r: None)
    assert elected.wait(5)
    link = HostConnection("h1", "test:///default")
    latest: dict[str, HostStats] = {}
    mon = HostMonitor(coord, [link], interval_s=0.2, latest=latest.get)
    mon.start()
    try:
        assert wait_for(lambda: any(h["state"] == "connected" for h in read_hosts(coord)))
        # The VM list follows what the host's own controller published, newest only.
        latest["h1"] = published("h1", time.time(), {"test": "running", "ghost": "paused"})
        assert wait_for(lambda: read_hosts(coord)[0]["vms"].get("ghost") == "paused")
        latest["h1"] = published("h1", time.time() - 3600, {"test": "running"})
        time.sleep(0.6)  # older than the one applied: ignored
        assert "ghost" in read_hosts(coord)[0]["vms"]
        latest["h1"] = published("h1", time.time(), {"test": "running"})
        assert wait_for(lambda: "ghost" not in read_hosts(coord)[0]["vms"])
        # Lifecycle events update the cache between rounds. test:///default is shared
        # by every connection in this process: use our own domain, leave "test".
        mon.interval_s = 3600
        time.sleep(0.5)  # let the round in progress finish; from here on only events count
        dom = guest.define(link.conn, designer.simple_domain_xml(SimpleGuest(
            name="hostmon-vm", uuid=str(uuid.uuid4()), domain_type="test", machine="pc")))
        dom.start()
        assert wait_for(lambda: read_hosts(coord)[0]["vms"].get("hostmon-vm") == "running")
        dom.destroy()
        dom.undefine()
        assert wait_for(lambda: "hostmon-vm" not in read_hosts(coord)[0]["vms"])
        assert read_hosts(coord)[0]["vms"]["test"] == "running"
        assert coord.children("stats") == {}  # the leader's monitor publishes no stats
        coord.resign()  # a deposed leader's monitor stops publishing
        before = read_hosts(coord)[0]["since"], coord.get("hosts/h1").version
        latest["h1"] = published("h1", time.time(), {"late": "running"})
        mon.collect_once()
        assert (read_hosts(coord)[0]["since"], coord.get("hosts/h1").version) == before
    finally:
        mon.stop()
        coord.close()


def state(coord) -> str | None:
    hosts = read_hosts(coord)
    return hosts[0]["state"] if hosts else None


def states(coord) -> dict[str, str]:
    return {h["name"]: h["state"] for h in read_hosts(coord)}


def test_maintenance_state_follows_the_cluster_state_without_a_link_change(tmp_path):
    coord = SqliteCoordinator(tmp_path / "c.db")
    elected = threading.Event()
    coord.campaign("me", lambda t: elected.set(), lambda r: None)
    assert elected.wait(5)
    closed: set[str] = set()
    link = HostConnection("h1", "test:///default")
    # A host whose link never comes up: after maintenance it shows its link's state
    # again, not "maintenance" for good.
    dead = HostConnection("h9", f"test://{tmp_path}/no-such-node.xml")
    mon = HostMonitor(coord, [link, dead], interval_s=0.2, closed=lambda: set(closed))
    mon.start()
    try:
        assert wait_for(lambda: state(coord) == "connected")
        closed.update({"h1", "h9"})
        assert wait_for(lambda: states(coord) == {"h1": "maintenance", "h9": "maintenance"})
        closed.clear()
        assert wait_for(lambda: states(coord) == {"h1": "connected",
                                                  "h9": dead.state.value})
        assert states(coord)["h9"] in ("connecting", "disconnected")
    finally:
        mon.stop()
        coord.close()
