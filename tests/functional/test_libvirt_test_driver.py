"""Facts, connection state and domain events against libvirt's own test driver."""

from __future__ import annotations

import time

from ahvlite.virt import facts, guest
from ahvlite.virt.conn import connection
from ahvlite.virt.hostconn import HostConnection, LinkState


def test_facts_from_the_test_driver():
    with connection("test:///default") as conn:
        f = facts.gather(conn, "t")
    assert f.hostname and f.cpu.online_cpus > 0 and f.memory_total_mib > 0
    assert "default-pool" in [p.name for p in f.pools]


def test_host_connection_delivers_lifecycle_events_and_closes():
    hc = HostConnection("t", "test:///default")
    events = []
    states = []
    hc.on_domain_event(events.append)
    hc.on_state(states.append)
    hc.start()
    assert hc.wait_connected(5)
    conn = hc.conn
    assert conn is not None
    dom = guest.lookup(conn, "test")
    dom.destroy()
    dom.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and [e.event for e in events] != ["stopped", "started"]:
        time.sleep(0.05)
    assert [e.event for e in events] == ["stopped", "started"]
    assert {e.domain for e in events} == {"test"}
    hc.close()
    assert hc.state == LinkState.CLOSED
    assert [s.state for s in states] == [LinkState.CONNECTED, LinkState.CLOSED]
