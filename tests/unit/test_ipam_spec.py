"""Managed networks in the spec: IpamSpec's rules, NicSpec.ip and ``--nic NET:ip=A``;
every mistake one InvalidSpec naming the field, the value and what is allowed."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.errors import build
from ahvlite.spec.network import IpamSpec, NetworkSpec, parse_pool
from ahvlite.spec.vm import VmSpec, parse_nic

BLUE = {"subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
        "pools": [{"start": "10.10.0.100", "end": "10.10.0.199"}]}


def net(**ipam):
    return build(NetworkSpec, networks=[{"name": "blue", "vlan": 10,
                                         "ipam": {**BLUE, **ipam}}])


def refused(**ipam) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as e:
        net(**ipam)
    return e.value


def pools(*ranges: str) -> list[dict]:
    return [parse_pool(r).model_dump(mode="json") for r in ranges]


def test_a_managed_network_round_trips_through_the_cluster_file():
    spec = net(dns=["10.10.0.2"], domain="lab.example", mtu=1400, lease_s=600)
    ipam = spec.networks[0].ipam
    assert ipam is not None and ipam.server == IPv4Address("10.10.0.254")
    assert ipam.size == 100 and ipam.in_pools(IPv4Address("10.10.0.150"))
    again = build(ClusterSpec, name="c", network=spec.model_dump(mode="json"))
    assert again.network.networks[0].ipam == ipam
    plain = build(NetworkSpec, networks=[{"name": "red", "vlan": 20}])
    assert plain.networks[0].ipam is None  # unmanaged, as before


@pytest.mark.parametrize(("change", "field", "value", "needle"), [
    ({"pools": pools("10.10.0.150-10.10.0.100")}, "pools[0]", "10.10.0.150-10.10.0.100",
     "start is not after its end"),
    ({"pools": pools("10.10.1.10-10.10.1.20")}, "pools[0]", "10.10.1.10-10.10.1.20",
     "inside 10.10.0.0/24"),
    ({"pools": pools("10.10.0.0-10.10.0.20")}, "pools[0]", "10.10.0.0-10.10.0.20",
     "without its network and broadcast"),
    ({"pools": pools("10.10.0.200-10.10.0.255")}, "pools[0]", "10.10.0.200-10.10.0.255",
     "10.10.0.1-10.10.0.254"),
    ({"pools": pools("10.10.0.100-10.10.0.150", "10.10.0.150-10.10.0.160")}, "pools[1]",
     "10.10.0.150-10.10.0.160", "not overlapping pools[0]"),
    ({"gateway": "10.10.0.120"}, "gateway", "10.10.0.120", "in no pool"),
    ({"gateway": "10.20.0.1"}, "gateway", "10.20.0.1", "inside 10.10.0.0/24"),
    ({"gateway": "10.10.0.254"}, "dhcp_server", "10.10.0.254", "other than the gateway"),
    ({"dhcp_server": "10.10.0.110"}, "dhcp_server", "10.10.0.110", "in no pool"),
])
def test_pools_gateway_and_server_rules_name_the_field_path(change, field, value, needle):
    e = refused(**change)
    assert e.field == f"network.networks[0].ipam.{field}"
    assert e.value == value and needle in e.allowed, e.message


@pytest.mark.parametrize(("change", "field"), [
    ({"subnet": "10.10.0.0/30"}, "ipam.subnet"),
    ({"subnet": "10.10.0.5/24"}, "networks.0.ipam.subnet"),
    ({"pools": []}, "networks.0.ipam.pools"),
    ({"dns": ["10.0.0.1"] * 5}, "networks.0.ipam.dns"),
    ({"domain": "bad_domain..x"}, "ipam.domain"),
    ({"domain": "x; dhcp-script=/bin/sh"}, "ipam.domain"),
    ({"mtu": 100}, "networks.0.ipam.mtu"),
    ({"lease_s": 60}, "networks.0.ipam.lease_s"),
    ({"lease_s": 2**31}, "networks.0.ipam.lease_s"),
    ({"router": "10.10.0.1"}, "networks.0.ipam.router"),
])
def test_field_rules(change, field):
    assert refused(**change).field == field


def test_two_pools_and_a_server_outside_them():
    spec = net(pools=pools("10.10.0.10-10.10.0.19", "10.10.0.100"), dhcp_server="10.10.0.2")
    ipam = spec.networks[0].ipam
    assert ipam is not None and ipam.size == 11 and ipam.server == IPv4Address("10.10.0.2")


def test_parse_pool():
    assert str(parse_pool("10.0.0.5-10.0.0.9")) == "10.0.0.5-10.0.0.9"
    assert parse_pool("10.0.0.5").size == 1
    with pytest.raises(InvalidSpec) as e:
        parse_pool("10.0.0.5-x")
    assert (e.value.field, e.value.value) == ("pool", "10.0.0.5-x")


def test_nic_ip_from_the_command_line():
    nic = parse_nic("blue:ip=10.10.0.50;mac=52:54:00:00:00:01")
    assert nic.ip == IPv4Address("10.10.0.50") and nic.mac == "52:54:00:00:00:01"
    assert nic.model_dump(mode="json", exclude_none=True)["ip"] == "10.10.0.50"
    for bad in ("blue:ip=10.10.0.300", "blue:ip=", "blue:ip=fe80::1"):
        with pytest.raises(InvalidSpec) as e:
            parse_nic(bad)
        assert e.value.field == "nic.ip", bad
    with pytest.raises(InvalidSpec) as e:
        parse_nic("blue:addr=1.2.3.4")
    assert "NET:ip=ADDRESS" in e.value.allowed


def test_one_address_twice_in_one_vm_is_refused():
    with pytest.raises(InvalidSpec) as e:
        build(VmSpec, name="v", nics=[{"network": "blue", "ip": "10.10.0.50"},
                                      {"network": "blue", "ip": "10.10.0.50"}])
    assert (e.value.field, e.value.value) == ("nics.ip", "10.10.0.50")
    build(VmSpec, name="v", nics=[{"network": "blue", "ip": "10.10.0.50"},
                                  {"network": "green", "ip": "10.10.0.50"}])


def test_ipam_spec_alone():
    ipam = build(IpamSpec, **BLUE)
    assert ipam.lease_s == 3600 and ipam.dns == [] and ipam.mtu is None
