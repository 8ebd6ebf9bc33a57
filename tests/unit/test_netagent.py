"""The netagent's pure part: the store's documents as the DHCP planner's inputs."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

from ahvlite.cluster.ipam import Allocation
from ahvlite.controller.netagent import (
    HostPlaces,
    dhcp_networks,
    host_bridges,
    place_of_key,
    plan_allocations,
)
from ahvlite.net.dhcp import plan
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.errors import build

IPAM = {"subnet": "10.10.0.0/24", "gateway": "10.10.0.1", "domain": "Lab.Example",
        "pools": [{"start": "10.10.0.100", "end": "10.10.0.199"}]}


def cluster(**host_network) -> ClusterSpec:
    return build(ClusterSpec, name="c", hosts=[
        {"name": "h1", "uri": "test:///default"},
        {"name": "h2", "uri": "test:///default", **host_network}],
        network={"bridges": [{"name": "br0"}, {"name": "br1"}], "networks": [
            {"name": "blue", "vlan": 10, "ipam": IPAM},
            {"name": "red", "vlan": 20},
            {"name": "green", "vlan": 30, "bridge": "br1", "ipam": IPAM}]})


def test_managed_networks_only_with_the_server_default_and_a_lower_case_domain():
    nets, skipped = dhcp_networks(cluster(), "h1")
    assert [(n.name, n.bridge, n.vlan) for n in nets] == [("blue", "br0", 10),
                                                          ("green", "br1", 30)]
    assert skipped == []
    blue = nets[0]
    assert blue.server == IPv4Address("10.10.0.254")
    assert blue.domain == "lab.example"
    assert blue.lease_s == 3600


def test_a_network_on_a_bridge_the_host_does_not_have_is_skipped_with_the_reason():
    spec = cluster(network={"bridges": [{"name": "br0"}]})
    assert host_bridges(spec, "h2") == ["br0"]
    nets, skipped = dhcp_networks(spec, "h2")
    assert [n.name for n in nets] == ["blue"]
    assert skipped == ["network green: bridge br1 is not one of h2's (br0)"]
    # Another host keeps the cluster's bridges.
    assert [n.name for n in dhcp_networks(spec, "h1")[0]] == ["blue", "green"]


def test_allocations_that_do_not_parse_are_skipped_with_the_reason():
    got, skipped = plan_allocations("blue", [
        Allocation("blue", "10.10.0.100", "52:54:00:00:00:01", "v1", "u1"),
        Allocation("blue", "10.10.0.300", "52:54:00:00:00:02", "v2", "u2"),
        Allocation("blue", "10.10.0.102", "01:00:5e:00:00:01", "v3", "u3"),
    ])
    assert got == [plan.Allocation("52:54:00:00:00:01", IPv4Address("10.10.0.100"), "v1")]
    assert len(skipped) == 2
    assert skipped[0].startswith("network blue: allocation '10.10.0.300' for "
                                 "'52:54:00:00:00:02' skipped: ")
    assert "unicast MAC" in skipped[1]


def test_responder_places_come_back_from_their_keys_and_nothing_else_does():
    where = HostPlaces(paths=plan.ResponderPaths(conf_dir=Path("/c"), run_dir=Path("/r"),
                                                 log_dir=Path("/l")), netns_prefix="t")
    at = place_of_key("br0-10", where)
    assert at == plan.place("br0", 10, paths=where.paths, netns_prefix="t")
    assert at is not None and at.pid_path == Path("/r/br0-10.pid")
    for key in ("br0-0", "br0-4095", "eth0-10", "br0-10.tmp", "../br0-10", ".br0-10.pid",
                "br0-1x", "br1234-10"):
        assert place_of_key(key, where) is None, key
