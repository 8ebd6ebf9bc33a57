"""The host monitor on libvirt's test driver, publishing into a real SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid

import pytest

from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.controller.hostmon import HostMonitor, read_hosts, read_stats
from ahvlite.virt import guest
from ahvlite.virt.hostconn import HostConnection
from tests.waiting import wait_for

pytestmark = pytest.mark.functional




def test_monitor_tracks_links_events_and_stats(tmp_path):
    coord = SqliteCoordinator(tmp_path / "c.db")
    elected = threading.Event()
    coord.campaign("me", lambda t: elected.set(), lambda r: None)
    assert elected.wait(5)
    link = HostConnection("h1", "test:///default")
    mon = HostMonitor(coord, [link], interval_s=0.2)
    mon.start()
    try:
        assert wait_for(lambda: any(h["state"] == "connected" for h in read_hosts(coord)))
        assert wait_for(lambda: len(mon.history.series("h1")) >= 2)
        stats = read_stats(coord)
        assert stats[0]["host"] == "h1" and stats[0]["cpus"] > 0
        assert stats[0]["interval_s"] is not None  # rates come from two samples
        assert [(v["name"], v["state"]) for v in stats[0]["vms"]] == [("test", "running")]
        # Lifecycle events update the cache between stats rounds. test:///default is
        # shared by every connection in this process: use our own domain, leave "test".
        mon.interval_s = 3600
        time.sleep(0.5)  # let the round in progress finish; from here on only events count
        dom = guest.define(link.conn, guest.simple_domain_xml(guest.SimpleGuest(
            name="hostmon-vm", uuid=str(uuid.uuid4()), domain_type="test", machine="pc")))
        guest.start(dom)
        assert wait_for(lambda: read_hosts(coord)[0]["vms"].get("hostmon-vm") == "running")
        dom.destroy()
        dom.undefine()
        assert wait_for(lambda: "hostmon-vm" not in read_hosts(coord)[0]["vms"])
        assert read_hosts(coord)[0]["vms"]["test"] == "running"
        out = subprocess.run([sys.executable, "-m", "ahvlite.cli.main", "stats", "--store",
                              coord.url, "--vm", "test", "--json"], capture_output=True,
                             text=True, timeout=30)
        assert json.loads(out.stdout)[0]["vms"][0]["name"] == "test"
        missing = subprocess.run([sys.executable, "-m", "ahvlite.cli.main", "stats", "--store",
                                  coord.url, "--host", "nope"], capture_output=True, text=True,
                                 timeout=30)
        assert missing.returncode == 3 and "Traceback" not in missing.stderr
        coord.resign()  # a deposed leader's monitor stops publishing
        before = read_stats(coord)[0]["at"]
        mon.collect_once()
        assert read_stats(coord)[0]["at"] == before
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
