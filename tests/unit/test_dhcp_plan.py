"""Planning a host's DHCP data plane: dnsmasq files and br0's OpenFlow table (pure)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from ahvlite.errors import InvalidSpec
from ahvlite.net import plan as hostplan
from ahvlite.net.dhcp import plan

BLUE = plan.DhcpNetwork(
    name="blue", bridge="br0", vlan=10, subnet=IPv4Network("10.10.0.0/24"),
    server=IPv4Address("10.10.0.254"), gateway=IPv4Address("10.10.0.1"),
    dns=(IPv4Address("10.10.0.2"), IPv4Address("10.10.0.3")), domain="lab.example",
    mtu=1400, lease_s=3600)
GREEN = plan.DhcpNetwork(name="green", bridge="br0", vlan=30,
                         subnet=IPv4Network("10.30.0.0/24"), server=IPv4Address("10.30.0.254"))
M1, M2, M3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"
ALLOCS = [plan.Allocation(M2, IPv4Address("10.10.0.51"), "vm2"),
          plan.Allocation(M1.upper(), IPv4Address("10.10.0.50"), "vm1")]
RESP = {"blue": (7, "02:ad:00:00:00:01")}


def ip(s: str) -> IPv4Address:
    return IPv4Address(s)


# -- dnsmasq ---------------------------------------------------------------------

def test_responder_names_files_and_exact_dnsmasq_text():
    paths = plan.ResponderPaths(Path("/s/conf"), Path("/s/run"), Path("/s/log"))
    r, skipped = plan.responder(BLUE, ALLOCS, host="h1", paths=paths)
    assert skipped == []
    at = r.place
    assert (at.netns, at.host_veth, at.ns_veth, at.key) == ("ahvd-br0-10", "ahd0v10", "dhcp0",
                                                            "br0-10")
    assert at == plan.place("br0", 10, paths=paths)  # found again without the network
    assert r.address == IPv4Interface("10.10.0.254/24")
    assert r.mac == plan.responder_mac("h1", "br0", 10) != plan.responder_mac("h2", "br0", 10)
    assert r.mac.startswith("02:ad:") and len(r.mac) == 17
    assert r.conf == (
        "port=0\n"
        "interface=dhcp0\n"
        "bind-interfaces\n"
        "except-interface=lo\n"
        "dhcp-range=set:net,10.10.0.0,static,255.255.255.0\n"
        "dhcp-authoritative\n"
        "dhcp-hostsfile=/s/conf/br0-10/hosts\n"
        "dhcp-optsfile=/s/conf/br0-10/opts\n"
        "leasefile-ro\n"
        "no-resolv\n"
        "no-hosts\n"
        "log-dhcp\n"
        "log-facility=/s/log/dhcp-br0-10.log\n"
        "pid-file=/s/run/br0-10.pid\n"
        "user=dnsmasq\n")
    assert r.place.conf_path == Path("/s/conf/br0-10/dnsmasq.conf")
    # Sorted by address, MACs lower-case, the lease time on every line.
    assert r.hosts == ("52:54:00:00:00:01,10.10.0.50,3600\n"
                       "52:54:00:00:00:02,10.10.0.51,3600\n")
    assert r.opts == ("tag:net,option:router,10.10.0.1\n"
                      "tag:net,option:dns-server,10.10.0.2,10.10.0.3\n"
                      "tag:net,option:domain-name,lab.example\n"
                      "tag:net,option:mtu,1400\n")


def test_without_a_gateway_dnsmasq_is_told_to_offer_no_router():
    r, _ = plan.responder(GREEN, [], host="h1")
    assert r.opts == "tag:net,option:router\n"
    assert r.hosts == ""


def test_allocations_that_do_not_fit_are_skipped_with_a_reason():
    bad = [plan.Allocation(M1, ip("10.99.0.5"), "vm1"),
           plan.Allocation(M2, ip("10.10.0.1"), "vm2"),  # the gateway
           plan.Allocation(M3, ip("10.10.0.254"), "vm3"),  # the DHCP server
           plan.Allocation("52:54:00:00:00:04", ip("10.10.0.60"), "vm4"),
           plan.Allocation("52:54:00:00:00:05", ip("10.10.0.60"), "vm5"),  # taken
           plan.Allocation("52:54:00:00:00:04", ip("10.10.0.61"), "vm4")]  # MAC twice
    r, skipped = plan.responder(BLUE, bad, host="h1")
    assert r.hosts == "52:54:00:00:00:04,10.10.0.60,3600\n"
    assert len(skipped) == 5
    assert ("network blue: allocation 10.99.0.5 for 52:54:00:00:00:01 (vm1) skipped: "
            "outside 10.10.0.0/24") in skipped
    assert all(s.startswith("network blue: allocation") for s in skipped)


@pytest.mark.parametrize(("change", "field"), [
    ({"domain": "lab.example\ndhcp-script=/bin/sh"}, "network.ipam.domain"),
    ({"domain": "Lab.Example"}, "network.ipam.domain"),
    ({"server": IPv4Address("10.99.0.1")}, "network.ipam.dhcp_server"),
    ({"server": IPv4Address("10.10.0.255")}, "network.ipam.dhcp_server"),
    ({"gateway": IPv4Address("10.10.0.0")}, "network.ipam.gateway"),
    ({"mtu": 100}, "network.ipam.mtu"),
    ({"lease_s": 60}, "network.ipam.lease_s"),
    ({"vlan": 4095}, "network.vlan"),
    ({"bridge": "br0 -- x"}, "network.bridge"),
    ({"dns": tuple(IPv4Address(f"10.10.0.{i}") for i in range(2, 7))}, "network.ipam.dns"),
])
def test_network_settings_that_could_reach_dnsmasq_are_checked(change, field):
    with pytest.raises(InvalidSpec) as err:
        replace(BLUE, **change)
    assert err.value.field == field


def test_an_address_or_port_of_the_wrong_kind_is_refused():
    with pytest.raises(InvalidSpec, match=r"allocation\.ip"):
        plan.Allocation(M1, "10.10.0.50")  # type: ignore[arg-type]
    with pytest.raises(InvalidSpec, match="ofport"):
        plan.VmPort("vnet0", 65534, M1, 10)  # the bridge's own LOCAL port


@pytest.mark.parametrize("mac", ["52:54:00:00:00:01\ndhcp-script=/x", "01:00:5e:00:00:01",
                                 "52-54-00-00-00-01", ""])
def test_a_mac_that_is_not_a_unicast_mac_is_refused(mac):
    with pytest.raises(InvalidSpec) as err:
        plan.Allocation(mac, ip("10.10.0.50"))
    assert err.value.field == "allocation.mac"
    with pytest.raises(InvalidSpec):
        plan.VmPort("vnet0", 3, mac, 10)


# -- OpenFlow ----------------------------------------------------------------------

def test_no_managed_network_is_ovs_default_table():
    assert plan.flow_table("br0", [], {}, [plan.VmPort("vnet0", 3, M1, 10)], {}).lines == [
        "cookie=0xa417000000000000,table=0,priority=0,actions=NORMAL"]


def test_exact_table_for_an_access_port_a_trunk_port_and_a_port_of_another_vlan():
    ports = [plan.VmPort("vnet0", 3, M1, 10),
             plan.VmPort("vnet1", 4, M3, 10, trunk=True),  # no allocation
             plan.VmPort("vnet2", 5, M2, 20)]  # VLAN 20 is not managed: untouched
    got = plan.flow_table("br0", [BLUE], {"blue": ALLOCS}, ports, RESP)
    assert got.skipped == []
    n, p, b, base = ("cookie=0xa41700010000000a", "cookie=0xa41700020000000a",
                     "cookie=0xa41700030000000a", "cookie=0xa417000000000000")
    assert got.lines == [
        f"{n},table=0,priority=200,in_port=7,actions=resubmit(,30)",
        f"{n},table=0,priority=190,udp,dl_vlan=10,tp_src=67,tp_dst=68,actions=drop",
        f"{n},table=0,priority=190,udp,dl_vlan=10,tp_src=68,tp_dst=67,actions=drop",
        f"{p},table=0,priority=100,in_port=3,actions=resubmit(,10)",
        f"{p},table=0,priority=100,in_port=4,vlan_tci=0x0000/0x1000,actions=resubmit(,10)",
        f"{b},table=0,priority=50,udp,dl_src={M1},tp_src=68,tp_dst=67,actions=drop",
        f"{b},table=0,priority=50,udp,dl_src={M2},tp_src=68,tp_dst=67,actions=drop",
        f"{base},table=0,priority=0,actions=NORMAL",
        f"{p},table=10,priority=130,udp,in_port=3,tp_src=67,tp_dst=68,actions=drop",
        f"{p},table=10,priority=130,udp,in_port=4,tp_src=67,tp_dst=68,actions=drop",
        f"{p},table=10,priority=120,udp,in_port=3,dl_src={M1},tp_src=68,tp_dst=67,"
        "actions=set_field:02:ad:00:00:00:01->eth_dst,output:7",
        f"{p},table=10,priority=120,udp,in_port=4,dl_src={M3},tp_src=68,tp_dst=67,"
        "actions=set_field:02:ad:00:00:00:01->eth_dst,output:7",
        f"{p},table=10,priority=115,arp,in_port=3,dl_src={M1},arp_spa=10.10.0.50,"
        f"arp_sha={M1},arp_tpa=10.10.0.254,actions=output:7",
        f"{p},table=10,priority=110,arp,in_port=3,dl_src={M1},arp_spa=0.0.0.0,"
        f"arp_sha={M1},actions=NORMAL",
        f"{p},table=10,priority=110,arp,in_port=3,dl_src={M1},arp_spa=10.10.0.50,"
        f"arp_sha={M1},actions=NORMAL",
        f"{p},table=10,priority=100,ip,in_port=3,dl_src={M1},nw_src=10.10.0.50,actions=NORMAL",
        f"{p},table=10,priority=100,rarp,in_port=3,dl_src={M1},actions=NORMAL",
        f"{base},table=10,priority=0,actions=drop",
        f"{p},table=30,priority=100,in_port=7,dl_dst={M1},actions=output:3",
        f"{p},table=30,priority=100,in_port=7,dl_dst={M3},actions=output:4",
        f"{n},table=30,priority=90,in_port=7,dl_dst=ff:ff:ff:ff:ff:ff,"
        "actions=output:3,output:4",
        f"{base},table=30,priority=0,actions=drop",
    ]


def test_before_its_responder_is_up_a_port_gets_only_its_filters():
    got = plan.flow_table("br0", [BLUE], {"blue": ALLOCS}, [plan.VmPort("vnet0", 3, M1, 10)],
                          {}).lines
    assert not any("output:" in line or "resubmit(,30)" in line for line in got)
    assert any("nw_src=10.10.0.50,actions=NORMAL" in line for line in got)
    assert any("udp,dl_vlan=10,tp_src=68,tp_dst=67,actions=drop" in line for line in got)


def test_cookies_select_one_network_on_one_bridge():
    ports = [plan.VmPort("vnet0", 3, M1, 10), plan.VmPort("vnet1", 4, M2, 30)]
    lines = plan.flow_table("br0", [BLUE, GREEN],
                            {"blue": ALLOCS, "green": [plan.Allocation(M2, ip("10.30.0.9"))]},
                            ports, {**RESP, "green": (8, "02:ad:00:00:00:02")}).lines
    want = plan.cookie(plan.KIND_BASE, 0, 30) & plan.NETWORK_COOKIE_MASK
    green = [line for line in lines
             if int(line.split(",")[0].split("=")[1], 16) & plan.NETWORK_COOKIE_MASK == want]
    assert green and all("in_port=3" not in g and "10.10." not in g for g in green)
    assert any("in_port=4" in g for g in green) and any("in_port=8" in g for g in green)
    # Networks of another bridge are not in br0's table.
    other = replace(GREEN, bridge="br1")
    assert plan.flow_table("br0", [other], {}, [], {}).lines == [
        "cookie=0xa417000000000000,table=0,priority=0,actions=NORMAL"]


def test_bridge_numbers_and_veth_names_fit_in_an_interface_name():
    assert plan.bridge_number("br0") == 0 and plan.bridge_number("br12") == 12
    assert 100 <= plan.bridge_number("uplink-br") <= 999
    r, _ = plan.responder(replace(BLUE, bridge="uplink-br", vlan=4094), [], host="h1")
    assert len(r.place.host_veth) <= 15


def test_vm_ports_are_read_from_what_ovsdb_shows():
    def port(name, **kw):
        return hostplan.ObservedPort(name=name, interfaces=(name,), **kw)

    def iface(name, mac=None):
        return hostplan.ObservedInterface(
            name=name, external_ids={"attached-mac": mac} if mac else {})

    bridge = hostplan.ObservedBridge("br0", "netdev", (
        port("br0"), hostplan.ObservedPort(name="br0-up", interfaces=("eth0", "eth1")),
        port("vnet0", tag=10), port("vnet1", tag=10, vlan_mode="native-untagged",
                                    trunks=(10, 20)),
        port("vnet2", tag=10), port("vnet3", tag=10), port("vnet4"),
        port("ahd0v10", tag=plan.DEAD_VLAN)))
    ifaces = (iface("br0"), iface("eth0"), iface("eth1"), iface("vnet0", M1),
              iface("vnet1", M2), iface("vnet2", M3), iface("vnet3", "01:00:5e:00:00:01"),
              iface("vnet4", "52:54:00:00:00:04"), iface("ahd0v10"))
    ofports = {"br0": 65534, "vnet0": 3, "vnet1": 4, "vnet3": 6, "vnet4": 7, "ahd0v10": 8}
    ports, skipped = plan.vm_ports(bridge, ifaces, ofports)
    assert ports == [plan.VmPort("vnet0", 3, M1, 10), plan.VmPort("vnet1", 4, M2, 10, trunk=True)]
    assert skipped[0] == "port vnet2: no OpenFlow port yet"
    assert skipped[1].startswith("port vnet3: port vnet3 mac='01:00:5e:00:00:01' is not valid")
    assert len(skipped) == 2
