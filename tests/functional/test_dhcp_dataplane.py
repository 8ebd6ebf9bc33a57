"""The DHCP data plane for real: OVS (userspace datapath) in a namespace of its own,
dnsmasq responders from the planner, busybox udhcpc in client namespaces on br0 ports.

Every namespace and link here is ours (prefix ``ahvt-dp``), addresses are TEST-NET-1
(192.0.2.0/24) inside those namespaces only; everything is removed by name or PID.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from ahvlite.net import netlink
from ahvlite.net.dhcp import plan, responder
from ahvlite.net.ovs import flows, ops
from ahvlite.net.ovs.api import ovsdb
from tests.waiting import wait_for

pytestmark = [pytest.mark.functional, pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(p) for p in (
        "ovsdb-server", "ovs-vswitchd", "ovs-ofctl", "dnsmasq", "busybox", "nsenter",
        "ethtool")),
    reason="needs root, Open vSwitch, dnsmasq-base, busybox, util-linux and ethtool")]

PREFIX = "ahvt-dp"
HOST_NS = f"{PREFIX}-host"
CLIENTS = {  # name -> (MAC, allocated address or None)
    "c1": ("52:54:00:d1:00:01", IPv4Address("192.0.2.51")),
    "c2": ("52:54:00:d1:00:02", IPv4Address("192.0.2.52")),
    "c3": ("52:54:00:d1:00:03", None),
}
NET = plan.DhcpNetwork(
    name="blue", bridge="br0", vlan=10, subnet=IPv4Network("192.0.2.0/24"),
    server=IPv4Address("192.0.2.254"), gateway=IPv4Address("192.0.2.1"),
    dns=(IPv4Address("192.0.2.2"),), domain="lab.example", mtu=1400, lease_s=3600)
UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc calls this with the lease in its environment; record it and apply the address.
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    echo "event=$1 ip=$ip mask=$mask router=$router dns=$dns domain=$domain mtu=$mtu" \\
         "lease=$lease serverid=$serverid" > "$LEASE_OUT"
    ;;
esac
exit 0
"""


def in_ns(ns: str, *argv: str, check: bool = True, timeout: float = 30,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={netlink.netns_path(ns)}", *argv],
                          capture_output=True, text=True, check=check, timeout=timeout,
                          env=env)


class Sandbox:
    """One OVS host (ovsdb-server + ovs-vswitchd, br0 netdev) and its client ports."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ahvt-dhcp-"))
        # dnsmasq re-reads hosts/opts as user dnsmasq: the path to them must be readable.
        self.tmp.chmod(0o755)
        self.ovs = self.tmp / "ovs"
        self.ovs.mkdir()
        self.db_sock = self.ovs / "db.sock"
        self.switch = f"unix:{self.ovs}/br0.mgmt"
        self.vswitchd_ctl = self.ovs / "vswitchd.ctl"
        self.paths = plan.ResponderPaths(conf_dir=self.tmp / "conf", run_dir=self.tmp / "run",
                                         log_dir=self.tmp / "log")
        self.script = self.tmp / "udhcpc.sh"
        self.script.write_text(UDHCPC_SCRIPT)
        self.script.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IROTH)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ofport: dict[str, int] = {}
        self.responders: list[plan.Responder] = []

    def ns(self, client: str) -> str:
        return f"{PREFIX}-{client}"

    def start(self) -> None:
        netlink.ensure_netns(HOST_NS)
        env = {**os.environ, "OVS_RUNDIR": str(self.ovs), "OVS_LOGDIR": str(self.ovs),
               "OVS_DBDIR": str(self.ovs)}
        db = self.ovs / "conf.db"
        subprocess.run(["ovsdb-tool", "create", str(db),
                        "/usr/share/openvswitch/vswitch.ovsschema"], check=True)
        self.procs.append(subprocess.Popen(
            ["ovsdb-server", str(db), f"--remote=punix:{self.db_sock}",
             f"--unixctl={self.ovs}/ovsdb.ctl", "--no-chdir"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        assert wait_for(self.db_sock.exists, 10)
        subprocess.run(["ovs-vsctl", f"--db=unix:{self.db_sock}", "--no-wait", "init"],
                       check=True)
        self.procs.append(subprocess.Popen(
            ["nsenter", f"--net={netlink.netns_path(HOST_NS)}", "ovs-vswitchd",
             f"unix:{self.db_sock}", f"--unixctl={self.vswitchd_ctl}", "--no-chdir",
             f"--log-file={self.ovs}/vswitchd.log"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with ovsdb(f"unix:{self.db_sock}") as api:
            api.add_br("br0", may_exist=True, datapath_type="netdev").execute(check_error=True)
            assert wait_for(lambda: Path(f"{self.ovs}/br0.mgmt").exists(), 10)
            for name, (mac, _) in CLIENTS.items():
                netlink.ensure_netns(self.ns(name))
                port = f"{name}p"
                netlink.create_veth_pair(port, "eth0", far_ns=self.ns(name), far_mac=mac,
                                         ns=HOST_NS)
                for dev, ns in ((port, HOST_NS), ("eth0", self.ns(name))):
                    in_ns(ns, "ethtool", "-K", dev, "tx", "off")
                ops.ensure_access_port(api, bridge="br0", name=port, tag=NET.vlan,
                                       external_ids={"attached-mac": mac})
                self.ofport[name] = ops.wait_ofport(api, port)
            # The uplink: a trunk port whose far end nobody uses (frames are traced).
            netlink.ensure_netns(self.ns("up"))
            netlink.create_veth_pair("up0", "eth0", far_ns=self.ns("up"), ns=HOST_NS)
            api.add_port("br0", "up0", may_exist=True).execute(check_error=True)
            self.ofport["up"] = ops.wait_ofport(api, "up0")

    def stop(self) -> None:
        try:
            for r in self.responders:
                responder.stop(r.place)  # by its recorded PID, even if OVSDB is gone
            if self.responders:
                with ovsdb(f"unix:{self.db_sock}") as api:
                    for r in self.responders:
                        responder.remove(api, r.place, host_ns=HOST_NS)
        finally:
            for proc in reversed(self.procs):
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)
            for r in self.responders:
                netlink.delete_netns(r.place.netns)
            for name in (*CLIENTS, "up"):
                netlink.delete_netns(self.ns(name))
            netlink.delete_netns(HOST_NS)
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the data plane, as the host agent will drive it -------------------------------

    def allocations(self, *clients: str) -> list[plan.Allocation]:
        return [plan.Allocation(CLIENTS[c][0], ip, c) for c in clients
                if (ip := CLIENTS[c][1] if c != "c3" else IPv4Address("192.0.2.53"))]

    def apply(self, net: plan.DhcpNetwork, allocs: list[plan.Allocation]
              ) -> tuple[str, list[str]]:
        r, skipped = plan.responder(net, allocs, host="h1", paths=self.paths,
                                    netns_prefix=PREFIX)
        assert not skipped
        with ovsdb(f"unix:{self.db_sock}") as api:
            done = responder.ensure(api, r, host_ns=HOST_NS)
            if r not in self.responders:
                self.responders = [x for x in self.responders
                                   if x.place.key != r.place.key] + [r]
            rport = ops.wait_ofport(api, r.place.host_veth)
            # The VM ports as the host agent will see them: read back from OVSDB.
            bridges, ifaces = ops.observe_ovs(api)
            ports, not_vm = plan.vm_ports(bridges[0], ifaces, ops.ofports(api))
        assert sorted((p.name, p.ofport, p.mac, p.tag) for p in ports) == sorted(
            (f"{c}p", self.ofport[c], mac, NET.vlan) for c, (mac, _) in CLIENTS.items())
        assert not_vm == []
        table = plan.flow_table("br0", [net], {net.name: allocs}, ports,
                                {net.name: (rport, r.mac)})
        return done, flows.install(table.lines, switch=self.switch)

    def dhcp(self, client: str, *, tries: int = 3) -> tuple[dict[str, str] | None, float]:
        """One udhcpc run in ``client``'s namespace: the lease it got (or None), seconds."""
        out = self.tmp / f"lease-{client}"
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        done = in_ns(self.ns(client), "busybox", "udhcpc", "-f", "-q", "-n", "-i", "eth0",
                     "-t", str(tries), "-T", "1", "-A", "1", "-O", "mtu", "-s",
                     str(self.script), check=False,
                     env={**os.environ, "LEASE_OUT": str(out)})
        took = time.perf_counter() - t0
        if done.returncode != 0 or not out.exists():
            return None, took
        return dict(kv.split("=", 1) for kv in out.read_text().split()), took

    def readdress(self, client: str, cidr: str) -> None:
        """``cidr`` as the client's one address, with its ARP cache emptied."""
        for argv in (("addr", "flush", "dev", "eth0"), ("addr", "add", cidr, "dev", "eth0"),
                     ("neigh", "flush", "dev", "eth0")):
            in_ns(self.ns(client), "ip", *argv)

    def ping(self, client: str, address: IPv4Address) -> bool:
        return in_ns(self.ns(client), "ping", "-c", "1", "-W", "1", str(address),
                     check=False).returncode == 0

    def trace(self, flow: str) -> str:
        return subprocess.run(["ovs-appctl", "-t", str(self.vswitchd_ctl), "ofproto/trace",
                               "br0", flow], capture_output=True, text=True,
                              check=True).stdout

    def flow_stats(self) -> list[str]:
        return subprocess.run(["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", self.switch],
                              capture_output=True, text=True, check=True).stdout.splitlines()


@pytest.fixture(scope="module")
def box():
    for ns in netlink.list_netns():
        if ns.startswith(PREFIX):
            pytest.fail(f"namespace {ns} is left from an earlier run: remove it first")
    sandbox = Sandbox()
    try:
        sandbox.start()
        yield sandbox
    finally:
        sandbox.stop()


def datapath_actions(trace: str) -> str:
    return next(line for line in trace.splitlines()
                if line.startswith("Datapath actions:")).split(":", 1)[1].strip()


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
            assert responder.ensure(api, r, host_ns=HOST_NS) == "started"
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
    at = plan.place("br0", NET.vlan, paths=box.paths, netns_prefix=PREFIX)
    pid = responder.running_pid(at)
    assert pid is not None
    with ovsdb(f"unix:{box.db_sock}") as api:
        responder.remove(api, at, host_ns=HOST_NS)
        assert at.host_veth not in ops.ofports(api)
    box.responders = [x for x in box.responders if x.place != at]
    assert responder.running_pid(at) is None
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists(), 5)
    assert at.netns not in netlink.list_netns()
    assert not netlink.link_exists(at.host_veth, ns=HOST_NS)
    assert not at.conf_path.parent.exists()
