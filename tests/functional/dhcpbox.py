"""A host's DHCP data plane for real, shared by the tests that drive it: OVS (userspace
datapath) in a namespace of its own, dnsmasq responders, busybox udhcpc in client
namespaces on br0 ports.

Every namespace and link is the sandbox's (its ``prefix``, one per test module, so two
modules can run at once); addresses are TEST-NET-1 (192.0.2.0/24) inside those
namespaces only; everything is removed by name or PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from ahvlite.net import netlink
from ahvlite.net.dhcp import plan, responder
from ahvlite.net.ovs import flows, ops
from ahvlite.net.ovs.api import ovsdb
from tests.waiting import wait_for

NEEDS = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(p) for p in (
        "ovsdb-server", "ovs-vswitchd", "ovs-ofctl", "dnsmasq", "busybox", "nsenter",
        "ethtool")),
    reason="needs root, Open vSwitch, dnsmasq-base, busybox, util-linux and ethtool")

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

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.host_ns = f"{prefix}-host"
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
        return f"{self.prefix}-{client}"

    def start(self) -> None:
        netlink.ensure_netns(self.host_ns)
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
            ["nsenter", f"--net={netlink.netns_path(self.host_ns)}", "ovs-vswitchd",
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
                                         ns=self.host_ns)
                for dev, ns in ((port, self.host_ns), ("eth0", self.ns(name))):
                    in_ns(ns, "ethtool", "-K", dev, "tx", "off")
                ops.ensure_access_port(api, bridge="br0", name=port, tag=NET.vlan,
                                       external_ids={"attached-mac": mac})
                self.ofport[name] = ops.wait_ofport(api, port)
            # The uplink: a trunk port whose far end nobody uses (frames are traced).
            netlink.ensure_netns(self.ns("up"))
            netlink.create_veth_pair("up0", "eth0", far_ns=self.ns("up"), ns=self.host_ns)
            api.add_port("br0", "up0", may_exist=True).execute(check_error=True)
            self.ofport["up"] = ops.wait_ofport(api, "up0")

    def places(self) -> list[plan.ResponderPlace]:
        """Every responder started here, by whom ever: by its pid file (BRIDGE-VLAN)."""
        out = []
        for pid_file in sorted(self.paths.run_dir.glob("*.pid")):
            bridge, _, vlan = pid_file.stem.rpartition("-")
            out.append(plan.place(bridge, int(vlan), paths=self.paths,
                                  netns_prefix=self.prefix))
        return out

    def stop(self) -> None:
        places = self.places()
        try:
            for at in places:
                responder.stop(at)  # by its recorded PID, even if OVSDB is gone
            if places:
                with ovsdb(f"unix:{self.db_sock}") as api:
                    for at in places:
                        responder.remove(api, at, host_ns=self.host_ns)
        finally:
            for proc in reversed(self.procs):
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)
            for at in places:
                netlink.delete_netns(at.netns)
            for name in (*CLIENTS, "up"):
                netlink.delete_netns(self.ns(name))
            netlink.delete_netns(self.host_ns)
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the data plane, as the host agent will drive it -------------------------------

    def allocations(self, *clients: str) -> list[plan.Allocation]:
        return [plan.Allocation(CLIENTS[c][0], ip, c) for c in clients
                if (ip := CLIENTS[c][1] if c != "c3" else IPv4Address("192.0.2.53"))]

    def apply(self, net: plan.DhcpNetwork, allocs: list[plan.Allocation]
              ) -> tuple[str, list[str]]:
        r, skipped = plan.responder(net, allocs, host="h1", paths=self.paths,
                                    netns_prefix=self.prefix)
        assert not skipped
        with ovsdb(f"unix:{self.db_sock}") as api:
            done = responder.ensure(api, r, host_ns=self.host_ns)
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


def sandbox(prefix: str) -> Iterator[Sandbox]:
    """A started sandbox of ``prefix``, stopped after (the body of a module fixture)."""
    for ns in netlink.list_netns():
        if ns.startswith(f"{prefix}-"):
            pytest.fail(f"namespace {ns} is left from an earlier run: remove it first")
    box = Sandbox(prefix)
    try:
        box.start()
        yield box
    finally:
        box.stop()


def datapath_actions(trace: str) -> str:
    return next(line for line in trace.splitlines()
                if line.startswith("Datapath actions:")).split(":", 1)[1].strip()


