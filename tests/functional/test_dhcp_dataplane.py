"""The DHCP data plane for real: OVS (userspace datapath) in a namespace of its own,
dnsmasq responders from the planner, busybox udhcpc in client namespaces on br0 ports.

Every namespace and link here is ours (prefix ``ahvt-dp``), addresses are TEST-NET-1
(192.0.2.0/24) inside those namespaces only; everything is removed by name or PID.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from ahvlite.net import netlink
from ahvlite.net.dhcp import plan, responder
from ahvlite.net.ovs import flows, ops
from ahvlite.net.ovs.api import ovsdb
from tests.functional.dhcpbox import CLIENTS, NEEDS, NET, datapath_actions, in_ns, sandbox
from tests.waiting import wait_for

pytestmark = [pytest.mark.functional, NEEDS]

PREFIX = "ahvt-dp"


@pytest.fixture(scope="module")
def box():
    yield from sandbox(PREFIX)


def test_planned_flows_parse_as_openflow14():
    r = (7, "02:ad:00:00:00:01")
    ports = [plan.VmPort("vnet0", 3, "52:54:00:00:00:01", 10),
             plan.VmPort("vnet1", 4, "52:54:00:00:00:02", 10, trunk=True)]
    allocs = [plan.Allocation("52:54:00:00:00:01", IPv4Address("192.0.2.50"))]
    lines = plan.flow_table("br0", [NET], {"blue": allocs}, ports, {"blue": r}).lines
    done = subprocess.run(["ovs-ofctl", "-O", "OpenFlow14", "parse-flows", "-"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("OFPT_FLOW_MOD") == len(lines)


def test_a_client_gets_exactly_its_allocation_with_every_option(box):
    done, changes = box.apply(NET, box.allocations("c1", "c2"))
    assert done == "started"
    assert changes  # an empty switch got the table
    lease, took = box.dhcp("c1")
    print(f"\nDHCP lease through OVS (udhcpc start to bound): {took * 1000:.0f} ms")
    assert lease == {"event": "bound", "ip": "192.0.2.51", "mask": "24", "router": "192.0.2.1",
                     "dns": "192.0.2.2", "domain": "lab.example", "mtu": "1400",
                     "lease": "3600", "serverid": "192.0.2.254"}


def test_an_unknown_mac_gets_nothing_until_it_is_allocated(box):
    box.apply(NET, box.allocations("c1", "c2"))
    lease, _ = box.dhcp("c3", tries=2)
    assert lease is None
    log = box.paths.log_dir / "dhcp-br0-10.log"
    assert wait_for(lambda: "52:54:00:d1:00:03 no address available" in log.read_text(), 5)
    # A new allocation is a hostsfile change: SIGHUP, no restart, answered at once.
    done, changes = box.apply(NET, box.allocations("c1", "c2", "c3"))
    assert done == "reloaded"
    assert changes  # c3's backstop flow and its own port flows
    lease, _ = box.dhcp("c3")
    assert lease is not None and lease["ip"] == "192.0.2.53"


def test_the_same_plan_twice_changes_nothing_on_the_switch(box):
    allocs = box.allocations("c1", "c2")
    box.apply(NET, allocs)
    assert box.dhcp("c1")[0] is not None  # packets on the counters
    before = [f for f in box.flow_stats() if "n_packets=0" not in f and "cookie" in f]
    assert any("set_field" in f for f in before), before
    done, changes = box.apply(NET, allocs)
    assert (done, changes) == ("unchanged", [])
    after = box.flow_stats()
    # Counters survive: no flow was deleted and re-added.
    for line in before:
        key = line.split("actions=")[1]
        again = [f for f in after if f.endswith(key) and "n_packets=0" not in f]
        assert again, line


def test_one_networks_flows_are_selected_by_cookie_on_the_switch(box):
    box.apply(NET, box.allocations("c1", "c2"))
    net_cookie = plan.cookie(plan.KIND_BASE, 0, NET.vlan)
    blue = flows.dump(switch=box.switch, cookie=net_cookie, mask=plan.NETWORK_COOKIE_MASK)
    every = flows.dump(switch=box.switch)
    # Everything but the three table defaults (NORMAL, and drop in tables 10 and 30).
    assert len(blue) == len(every) - 3
    kinds = {int(f.split("cookie=")[1].split(",")[0], 16) for f in blue}
    assert kinds == {plan.cookie(k, 0, NET.vlan)
                     for k in (plan.KIND_NETWORK, plan.KIND_PORT, plan.KIND_BACKSTOP)}


def test_spoofed_address_mac_and_arp_are_dropped(box):
    box.apply(NET, box.allocations("c1", "c2"))
    assert box.dhcp("c1")[0] is not None and box.dhcp("c2")[0] is not None
    assert box.ping("c1", IPv4Address("192.0.2.52"))
    # c1 takes an address that is not its own: its ARP and IP are dropped at its port.
    box.readdress("c1", "192.0.2.77/24")
    assert in_ns(box.ns("c1"), "ip", "-4", "-o", "addr", "show", "eth0").stdout.count(
        "inet 192.0.2.77/24") == 1
    assert not box.ping("c1", IPv4Address("192.0.2.52"))
    box.readdress("c1", "192.0.2.51/24")
    assert wait_for(lambda: box.ping("c1", IPv4Address("192.0.2.52")), 5)
    p1, m1 = box.ofport["c1"], CLIENTS["c1"][0]
    base = f"in_port={p1},dl_dst=52:54:00:d1:00:02"
    ip_own = f"{base},dl_src={m1},ip,nw_src=192.0.2.51,nw_dst=192.0.2.52"
    assert datapath_actions(box.trace(ip_own)) != "drop"
    assert datapath_actions(box.trace(ip_own.replace(m1, "52:54:00:66:66:66"))) == "drop"
    arp = f"in_port={p1},dl_src={m1},dl_dst=ff:ff:ff:ff:ff:ff,arp,arp_sha={m1},arp_tpa=192.0.2.52"
    assert datapath_actions(box.trace(f"{arp},arp_spa=192.0.2.51")) != "drop"
    assert datapath_actions(box.trace(f"{arp},arp_spa=192.0.2.77")) == "drop"
    assert datapath_actions(box.trace(
        f"{arp},arp_spa=192.0.2.51".replace(f"arp_sha={m1}", "arp_sha=52:54:00:66:66:66"))
    ) == "drop"
    # QEMU's RARP announce after migration passes; a VM answering DHCP does not.
    rarp = f"in_port={p1},dl_src={m1},dl_dst=ff:ff:ff:ff:ff:ff,rarp"
    assert datapath_actions(box.trace(rarp)) != "drop"
    rogue = f"in_port={p1},dl_src={m1},dl_dst=ff:ff:ff:ff:ff:ff,udp,udp_src=67,udp_dst=68"
    assert datapath_actions(box.trace(rogue)) == "drop"


def test_dhcp_on_the_uplink_is_dropped_on_managed_vlans_only(box):
    box.apply(NET, box.allocations("c1", "c2"))
    up = box.ofport["up"]
    for sport, dport in ((67, 68), (68, 67)):
        frame = (f"in_port={up},dl_src=52:54:00:ee:00:01,dl_dst=ff:ff:ff:ff:ff:ff,"
                 f"udp,udp_src={sport},udp_dst={dport}")
        assert datapath_actions(box.trace(f"{frame},dl_vlan=10")) == "drop"
        # VLAN 20 is unmanaged: its DHCP still comes from the outside.
        assert datapath_actions(box.trace(f"{frame},dl_vlan=20")) != "drop"
    # A unicast RENEW meant for another host's responder MAC is answered here.
    p1, m1 = box.ofport["c1"], CLIENTS["c1"][0]
    r = next(x for x in box.responders if x.place.key == "br0-10")
    renew = (f"in_port={p1},dl_src={m1},dl_dst=02:ad:00:00:00:99,udp,nw_src=192.0.2.51,"
             f"nw_dst=192.0.2.254,udp_src=68,udp_dst=67")
    trace = box.trace(renew)
    assert f"set_field:{r.mac}->eth_dst" in trace and datapath_actions(trace) != "drop"


def test_a_lease_change_reloads_and_a_server_change_restarts(box):
    box.apply(NET, box.allocations("c1", "c2"))
    done, _ = box.apply(replace(NET, lease_s=600), box.allocations("c1", "c2"))
    assert done == "reloaded"
    lease, _ = box.dhcp("c1")
    assert lease is not None and lease["lease"] == "600"
    moved = replace(NET, server=IPv4Address("192.0.2.250"))
    r = next(x for x in box.responders if x.place.key == "br0-10")
    old_pid = responder.running_pid(r.place)
    done, changes = box.apply(moved, box.allocations("c1", "c2"))
    assert done == "restarted" and changes  # arp_tpa follows the server
    new_r = next(x for x in box.responders if x.place.key == "br0-10")
    assert responder.running_pid(new_r.place) not in (None, old_pid)
    lease, _ = box.dhcp("c1")
    assert lease is not None and lease["serverid"] == "192.0.2.250"
    box.apply(NET, box.allocations("c1", "c2"))


def test_a_renew_after_a_responder_restart_is_acked_by_unicast(box):
    """The RENEW is IP unicast to the server address and the ACK comes back unicast
    (the responder's namespace ARPs for the guest): the whole non-broadcast path."""
    box.apply(NET, box.allocations("c1", "c2"))
    out = box.tmp / "lease-c2-bg"
    out.unlink(missing_ok=True)
    client = subprocess.Popen(
        ["nsenter", f"--net={netlink.netns_path(box.ns('c2'))}", "busybox", "udhcpc", "-f",
         "-i", "eth0", "-t", "3", "-T", "1", "-A", "1", "-s", str(box.script)],
        env={**os.environ, "LEASE_OUT": str(out)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(out.exists, 10)
        r = next(x for x in box.responders if x.place.key == "br0-10")
        assert responder.stop(r.place)
        out.unlink()
        with ovsdb(f"unix:{box.db_sock}") as api:
            # A new dnsmasq with no lease database: authoritative, it ACKs the renew.
            assert responder.ensure(api, r, host_ns=box.host_ns) == "started"
        os.kill(client.pid, signal.SIGUSR1)  # udhcpc: renew now
        assert wait_for(out.exists, 10)
        assert "event=renew ip=192.0.2.52 " in out.read_text()
        log = r.place.log_path.read_text()
        assert "DHCPREQUEST(dhcp0) 192.0.2.52 52:54:00:d1:00:02" in log
        assert "DHCPACK(dhcp0) 192.0.2.52 52:54:00:d1:00:02" in log
    finally:
        client.terminate()
        client.wait(timeout=10)


def test_dnsmasq_runs_as_its_own_user_not_root(box):
    box.apply(NET, box.allocations("c1", "c2"))
    r = next(x for x in box.responders if x.place.key == "br0-10")
    status = Path(f"/proc/{responder.running_pid(r.place)}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid) == pwd.getpwnam("dnsmasq").pw_uid != 0


def test_a_responder_veth_removed_behind_its_back_is_remade_and_dnsmasq_restarted(box):
    box.apply(NET, box.allocations("c1", "c2"))
    r = next(x for x in box.responders if x.place.key == "br0-10")
    old_pid = responder.running_pid(r.place)
    netlink.delete_link(r.place.ns_veth, ns=r.place.netns)  # takes its peer in br0 along
    done, _ = box.apply(NET, box.allocations("c1", "c2"))
    assert done == "restarted"  # bound to an interface that is gone: must restart
    assert responder.running_pid(r.place) not in (None, old_pid)
    lease, _ = box.dhcp("c1")
    assert lease is not None and lease["ip"] == "192.0.2.51"


def test_remove_by_place_ends_dnsmasq_by_its_pid_and_removes_what_it_made(box):
    box.apply(NET, box.allocations("c1", "c2"))
    # The agent removes a responder whose network it no longer knows: names only.
    at = plan.place("br0", NET.vlan, paths=box.paths, netns_prefix=box.prefix)
    pid = responder.running_pid(at)
    assert pid is not None
    with ovsdb(f"unix:{box.db_sock}") as api:
        responder.remove(api, at, host_ns=box.host_ns)
        assert at.host_veth not in ops.ofports(api)
    box.responders = [x for x in box.responders if x.place != at]
    assert responder.running_pid(at) is None
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists(), 5)
    assert at.netns not in netlink.list_netns()
    assert not netlink.link_exists(at.host_veth, ns=box.host_ns)
    assert not at.conf_path.parent.exists()
