"""The pure IPAM planner: which addresses may be reserved, which free ones a batch gets,
which NICs of a VM need one."""

from __future__ import annotations

from ipaddress import IPv4Address as A

import pytest

from ahvlite.cluster.ipamplan import NicWant, check_request, choose, wants_of
from ahvlite.errors import Conflict, InvalidSpec
from ahvlite.spec.errors import build
from ahvlite.spec.network import NetworkSpec
from ahvlite.spec.vm import NicSpec

NETWORK = build(NetworkSpec, networks=[
    {"name": "blue", "vlan": 10, "ipam": {
        "subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
        "pools": [{"start": "10.10.0.100", "end": "10.10.0.102"},
                  {"start": "10.10.0.20", "end": "10.10.0.21"}]}},
    {"name": "red", "vlan": 20}])
BLUE = NETWORK.networks[0].ipam
assert BLUE is not None


@pytest.mark.parametrize(("ip", "needle"), [
    ("10.10.1.5", "inside 10.10.0.0/24, the subnet of network blue"),
    ("10.10.0.0", "not its network or broadcast"),
    ("10.10.0.255", "not its network or broadcast"),
    ("10.10.0.1", "other than the gateway of network blue"),
    ("10.10.0.254", "other than the DHCP server of network blue"),
])
def test_addresses_no_nic_may_have(ip, needle):
    with pytest.raises(InvalidSpec) as e:
        check_request("blue", BLUE, A(ip))
    assert e.value.value == ip and needle in e.value.allowed
    assert "network blue" in e.value.field


def test_an_address_outside_the_pools_may_be_reserved():
    check_request("blue", BLUE, A("10.10.0.50"))
    check_request("blue", BLUE, A("10.10.0.100"))


def test_choose_goes_in_pool_order_and_skips_what_is_taken():
    assert choose("blue", BLUE, set(), 2) == [A("10.10.0.100"), A("10.10.0.101")]
    assert choose("blue", BLUE, {A("10.10.0.100"), A("10.10.0.102")}, 3) == [
        A("10.10.0.101"), A("10.10.0.20"), A("10.10.0.21")]
    assert choose("blue", BLUE, set(), 0) == []


def test_a_batch_too_big_for_the_pools_gets_nothing_and_says_why():
    taken = {A("10.10.0.100"), A("10.10.0.50")}  # 10.10.0.50 is outside the pools
    assert len(choose("blue", BLUE, taken, 4)) == 4
    with pytest.raises(Conflict) as e:
        choose("blue", BLUE, taken, 5)
    msg = e.value.message
    assert "network blue has no free address for 5 NIC(s)" in msg
    assert "10.10.0.100-10.10.0.102, 10.10.0.20-10.10.0.21" in msg
    assert "1 of 5 in use, 4 free" in msg


def test_wants_are_the_nics_on_managed_networks():
    nics = [NicSpec(network="blue", mac="52:54:00:00:00:01"),
            NicSpec(network="red", mac="52:54:00:00:00:02"),
            NicSpec(network="blue", mac="52:54:00:00:00:03", ip=A("10.10.0.50"))]
    assert wants_of(NETWORK, "v", "u", nics) == [
        NicWant("blue", "52:54:00:00:00:01", "v", "u"),
        NicWant("blue", "52:54:00:00:00:03", "v", "u", A("10.10.0.50"))]


def test_wants_refuse_what_ipam_cannot_serve():
    with pytest.raises(InvalidSpec) as e:
        wants_of(NETWORK, "v", "u", [NicSpec(network="red", mac="52:54:00:00:00:01",
                                             ip=A("10.20.0.5"))])
    assert (e.value.field, e.value.value) == ("nic.ip", "10.20.0.5")
    assert "network red is not managed" in e.value.allowed
    with pytest.raises(InvalidSpec) as e:
        wants_of(NETWORK, "v", "u", [NicSpec(network="red", mac="52:54:00:00:00:01",
                                             mode="trunk", trunk_vlans=(10, 30))])
    assert (e.value.field, e.value.value) == ("nic.trunk_vlans", 10)
    assert "managed network blue" in e.value.allowed
    with pytest.raises(InvalidSpec) as e:
        wants_of(NETWORK, "v", "u", [NicSpec(network="blue", mac="52:54:00:00:00:01",
                                             ip=A("10.10.0.1"))])
    assert e.value.value == "10.10.0.1"
    with pytest.raises(InvalidSpec) as e:
        wants_of(NETWORK, "v", "u", [NicSpec(network="blue")])
    assert e.value.field == "nic.mac"
    # A trunk on the managed network itself carries it as its native VLAN: fine.
    assert len(wants_of(NETWORK, "v", "u", [NicSpec(
        network="blue", mac="52:54:00:00:00:01", mode="trunk", trunk_vlans=(10, 20))])) == 1


def test_choose_can_skip_free_addresses_after_a_lost_race():
    assert choose("blue", BLUE, set(), 2, skip=1) == [A("10.10.0.101"), A("10.10.0.102")]
    # Never past the end: as many as the pools can spare.
    assert choose("blue", BLUE, set(), 2, skip=99) == [A("10.10.0.20"), A("10.10.0.21")]
    assert choose("blue", BLUE, {A("10.10.0.101")}, 4, skip=3) == [
        A("10.10.0.100"), A("10.10.0.102"), A("10.10.0.20"), A("10.10.0.21")]
