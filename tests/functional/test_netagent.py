"""The netagent loop for real, one tick at a time on an injected clock: the embedded
SQLite store holds the cluster spec and the IPAM allocations, the host is an OVS
sandbox (tests/functional/dhcpbox.py) with busybox udhcpc clients on br0 ports.

Every namespace and link here is ours (prefix ``ahvt-na``), addresses are TEST-NET-1
inside those namespaces only; everything is removed by name or PID.
"""

from __future__ import annotations

import logging
import os
import signal
from ipaddress import IPv4Address

import pytest

from ahvlite.clock import FakeClock
from ahvlite.cluster import ipam
from ahvlite.cluster.ipamplan import NicWant
from ahvlite.cluster.state import ClusterState
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.controller.netagent import HostPlaces, NetAgent
from ahvlite.errors import HostUnreachable
from ahvlite.kv import Put
from ahvlite.net import netlink
from ahvlite.net.dhcp import plan, responder
from ahvlite.net.ovs import flows, ops
from ahvlite.net.ovs.api import ovsdb
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.errors import build
from tests.functional.dhcpbox import CLIENTS, NEEDS, Sandbox, sandbox
from tests.waiting import wait_for

pytestmark = [pytest.mark.functional, NEEDS]

PREFIX = "ahvt-na"
BLUE = {"name": "blue", "vlan": 10, "ipam": {
    "subnet": "192.0.2.0/24", "gateway": "192.0.2.1", "dhcp_server": "192.0.2.254",
    "dns": ["192.0.2.2"], "domain": "Lab.Example", "mtu": 1400,
    "pools": [{"start": "192.0.2.50", "end": "192.0.2.99"}]}}


def cluster(*networks: dict) -> ClusterSpec:
    return build(ClusterSpec, name="c", hosts=[{"name": "h1", "uri": "test:///default"}],
                 network={"networks": list(networks)})


class Store:
    """The real store, with an outage switch: while ``down``, every call fails as a
    ZooKeeper store fails when no member answers (the agent's DocStore is our own
    interface)."""

    def __init__(self, real: SqliteCoordinator) -> None:
        self.real = real
        self.down = False

    def __getattr__(self, name: str):
        if self.down:
            raise HostUnreachable("no ZooKeeper member answered for 2 s")
        return getattr(self.real, name)


@pytest.fixture(scope="module")
def box():
    yield from sandbox(PREFIX)


@pytest.fixture
def world(box: Sandbox, tmp_path):
    """A store with the cluster (blue managed), an agent on an injected clock, and the
    host left without any responder or flow of ours afterwards."""
    real = SqliteCoordinator(tmp_path / "store.db")
    ClusterState(real).write_spec(cluster(BLUE), None)
    store = Store(real)
    clock = FakeClock(100.0)
    where = HostPlaces(ovsdb=f"unix:{box.db_sock}", paths=box.paths, netns_prefix=PREFIX,
                       host_ns=box.host_ns, switch=lambda bridge: box.switch)
    agents: list[NetAgent] = []

    def agent() -> NetAgent:
        a = NetAgent(store, lambda: ClusterState(store).spec(), "h1", where=where,  # type: ignore[arg-type]
                     clock=clock)
        agents.append(a)
        return a

    yield store, clock, agent
    for a in agents:
        a.close()
    with ovsdb(f"unix:{box.db_sock}") as api:
        for at in box.places():
            responder.remove(api, at, host_ns=box.host_ns)
    flows.install(["priority=0,actions=NORMAL"], switch=box.switch)
    real.close()


def allocate(store: Store, *clients: str) -> None:
    spec = ClusterState(store.real).spec()
    ipam.allocate(store.real, spec.network, [
        NicWant("blue", CLIENTS[c][0], c, f"uuid-{c}",
                CLIENTS[c][1] or IPv4Address("192.0.2.53")) for c in clients],
        by="test", now=1.0)


def release(store: Store, *clients: str) -> None:
    ipam.release(store.real, [(CLIENTS[c][0], "blue") for c in clients], None, now=2.0)


def hosts_file(box: Sandbox) -> str:
    return plan.place("br0", 10, paths=box.paths, netns_prefix=PREFIX).hosts_path.read_text()


def allowed_sources(box: Sandbox) -> set[str]:
    """The addresses VM ports may send from, as the switch's flows say."""
    return {f.split("nw_src=")[1].split()[0].rstrip(",") for f in flows.dump(
        switch=box.switch) if "nw_src=" in f}


def test_an_allocation_reaches_hostsfile_flows_and_the_client_and_a_release_undoes_it(
        box, world):
    store, clock, agent = world
    a = agent()
    allocate(store, "c1")
    assert a.step() == "applied"
    assert hosts_file(box) == "52:54:00:d1:00:01,192.0.2.51,3600\n"
    assert allowed_sources(box) == {"192.0.2.51"}
    lease, _ = box.dhcp("c1")
    assert lease is not None
    assert (lease["ip"], lease["router"], lease["domain"], lease["mtu"]) == (
        "192.0.2.51", "192.0.2.1", "lab.example", "1400")
    assert box.dhcp("c2", tries=2)[0] is None  # no allocation: no answer
    # Nothing new: nothing done until the resync is due, then all of it, changing nothing.
    assert a.step() == "unchanged"
    before = flows.dump(switch=box.switch)
    clock.advance(5)
    assert a.step() == "applied"
    assert flows.dump(switch=box.switch) == before
    allocate(store, "c2")
    assert a.step() == "applied"
    assert box.dhcp("c2")[0] is not None
    release(store, "c1")
    assert a.step() == "applied"
    assert hosts_file(box) == "52:54:00:d1:00:02,192.0.2.52,3600\n"
    assert allowed_sources(box) == {"192.0.2.52"}
    assert box.dhcp("c1", tries=2)[0] is None


def test_a_malformed_store_document_is_skipped_with_a_reason_and_the_rest_served(
        box, world, caplog):
    store, clock, agent = world
    a = agent()
    allocate(store, "c3")
    bad_json = ipam.mac_key("blue", "52:54:00:d1:00:09")
    outside = ipam.mac_key("blue", CLIENTS["c1"][0])
    store.real.transaction([
        Put(bad_json, b"{not json"),
        Put(outside, b'{"ip": "198.51.100.7", "vm": "x", "vm_uuid": "u"}'),
        Put(ipam.GEN_KEY, b'{"at": 3}')])
    with caplog.at_level(logging.WARNING, logger="ahvlite.controller.netagent"):
        assert a.step() == "applied"
    assert hosts_file(box) == "52:54:00:d1:00:03,192.0.2.53,3600\n"
    assert "allocation 198.51.100.7 for 52:54:00:d1:00:01 (x) skipped: outside " \
           "192.0.2.0/24" in caplog.text
    assert f"{bad_json}: not an allocation document, skipped" in caplog.text
    lease, _ = box.dhcp("c3")
    assert lease is not None and lease["ip"] == "192.0.2.53"
    # Said once, not every tick.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ahvlite.controller.netagent"):
        clock.advance(5)
        assert a.step() == "applied"
    assert "skipped" not in caplog.text


def test_while_the_store_is_down_nothing_changes_on_the_host(box, world):
    store, clock, agent = world
    a = agent()
    allocate(store, "c1")
    assert a.step() == "applied"
    pid = responder.running_pid(plan.place("br0", 10, paths=box.paths, netns_prefix=PREFIX))
    table = flows.dump(switch=box.switch)
    store.down = True
    release(store, "c1")  # the leader released it meanwhile; this host cannot know yet
    clock.advance(5)
    assert a.step() == "store-unavailable"
    assert "192.0.2.51" in hosts_file(box)
    assert flows.dump(switch=box.switch) == table
    assert box.dhcp("c1")[0] is not None  # dnsmasq answers from its last hostsfile
    store.down = False
    assert a.step() == "applied"
    assert "192.0.2.51" not in hosts_file(box)
    assert responder.running_pid(plan.place("br0", 10, paths=box.paths,
                                            netns_prefix=PREFIX)) == pid


def test_a_restarted_agent_takes_over_and_a_dead_dnsmasq_is_restarted_at_the_resync(
        box, world):
    store, clock, agent = world
    allocate(store, "c2")
    first = agent()
    assert first.step() == "applied"
    at = plan.place("br0", 10, paths=box.paths, netns_prefix=PREFIX)
    pid = responder.running_pid(at)
    first.close()
    # The unit's KillMode=process: dnsmasq outlived its agent; the next one keeps it.
    second = agent()
    assert second.step() == "applied"
    assert responder.running_pid(at) == pid
    os.kill(pid, signal.SIGKILL)  # our own sandbox's dnsmasq, by its recorded PID
    assert wait_for(lambda: responder.running_pid(at) is None, 5)
    assert second.step() == "unchanged"  # not looked at between resyncs
    clock.advance(5)
    assert second.step() == "applied"
    assert responder.running_pid(at) not in (None, pid)
    assert box.dhcp("c2")[0] is not None


def test_a_deleted_network_takes_its_responder_and_flows_along(box, world):
    store, _, agent = world
    a = agent()
    allocate(store, "c1")
    assert a.step() == "applied"
    at = plan.place("br0", 10, paths=box.paths, netns_prefix=PREFIX)
    pid = responder.running_pid(at)
    assert pid is not None
    release(store, "c1")
    state = ClusterState(store.real)
    state.write_spec(cluster({"name": "blue", "vlan": 10}), state.spec_version())  # unmanaged
    assert a.step() == "applied"
    assert responder.running_pid(at) is None
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5)
    assert at.netns not in netlink.list_netns()
    assert not at.conf_path.parent.exists()
    with ovsdb(f"unix:{box.db_sock}") as api:
        assert at.host_veth not in ops.ofports(api)
    # Only the bridge's default is left: NORMAL, no filter of a managed network.
    assert [f.split("actions=")[1] for f in flows.dump(switch=box.switch)] == ["NORMAL"]
    assert a.step() == "unchanged"


def test_without_ovsdb_it_says_so_once_and_changes_nothing(box, world, caplog, tmp_path):
    store, clock, _ = world
    allocate(store, "c1")
    a = NetAgent(store, lambda: ClusterState(store).spec(), "h1", clock=clock,  # type: ignore[arg-type]
                 where=HostPlaces(ovsdb=f"unix:{tmp_path}/none.sock", paths=box.paths,
                                  netns_prefix=PREFIX, host_ns=box.host_ns))
    with caplog.at_level(logging.WARNING, logger="ahvlite.controller.netagent"):
        assert a.step() == "ovsdb-unavailable"
        clock.advance(5)
        assert a.step() == "ovsdb-unavailable"
    assert caplog.text.count("cannot reach OVSDB") == 1
    assert box.places() == []


def test_a_network_on_a_bridge_this_host_lacks_is_left_out_and_the_others_served(
        box, world, caplog):
    store, clock, agent = world
    green = {**BLUE, "name": "green", "bridge": "br1"}
    state = ClusterState(store.real)
    state.write_spec(build(ClusterSpec, name="c", hosts=[{"name": "h1",
                                                          "uri": "test:///default"}],
                           network={"bridges": [{"name": "br0"}, {"name": "br1"}],
                                    "networks": [BLUE, green]}), state.spec_version())
    allocate(store, "c1")
    a = agent()
    with caplog.at_level(logging.WARNING, logger="ahvlite.controller.netagent"):
        assert a.step() == "applied"
        clock.advance(5)
        assert a.step() == "applied"
    assert caplog.text.count("network green: bridge br1 is not in this host's OVSDB") == 1
    assert [at.key for at in box.places()] == ["br0-10"]
    assert box.dhcp("c1")[0] is not None
