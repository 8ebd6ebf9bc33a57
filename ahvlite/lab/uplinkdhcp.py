"""A DHCP server on the uplink side of a lab: what a site's own DHCP server is to AHV.

The kernel here has neither VLAN devices (no 8021q) nor VLAN-aware Linux bridges, so
the VLANs are split off by an Open vSwitch of its own, like the lab hosts' (userspace
datapath): namespace ``ahvl-LAB-uplink`` runs ovsdb-server and ovs-vswitchd with bridge
``brx``; its port ``trunk`` is a veth whose other end is a port of the lab's top-of-rack
bridge, and one access port per VLAN (``aVLAN``, tagged) is a veth into namespace
``ahvl-LAB-uplinkd``, where one dnsmasq hands out a dynamic range on each (``dVLAN``).

Everything is named from the lab name and recorded in the lab state before it is made
(processes under host ``uplink``), so ``lab down`` and the leftover sweep of ``lab up``
end the processes by PID and remove the namespaces and links, like the hosts'.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

from ahvlite.clock import wait_until
from ahvlite.errors import Conflict, InvalidSpec, NotFound, OperationFailed, OperationTimeout
from ahvlite.lab import lab, namespaces, processes
from ahvlite.lab.layout import LabLayout, netns_prefix, veth_prefix
from ahvlite.lab.state import LabState
from ahvlite.net import netlink
from ahvlite.net.ovs import ops as ovs_ops
from ahvlite.net.ovs.api import ovsdb

HOST = "uplink"  # ProcessRecord.host of its processes: no lab host has this name
BRIDGE = "brx"
TRUNK = "trunk"
# dnsmasq drops to its own user (as the netagent's do); its files must be its own.
DNSMASQ_USER = "dnsmasq"


@dataclass(frozen=True)
class UplinkNet:
    """One VLAN the uplink server answers on: its address there and a dynamic range."""

    vlan: int
    server: IPv4Interface
    start: IPv4Address
    end: IPv4Address

    def check(self) -> None:
        if not 1 <= self.vlan <= 4094:
            raise InvalidSpec("vlan", self.vlan, "1-4094")
        net = self.server.network
        for field, ip in (("start", self.start), ("end", self.end)):
            if ip not in net or ip == self.server.ip:
                raise InvalidSpec(field, str(ip), f"an address of {net} other than the "
                                  f"server's {self.server.ip}")
        if self.start > self.end:
            raise InvalidSpec("end", str(self.end), f"not below start {self.start}")

    @property
    def dhcp_range(self) -> str:
        return f"{self.start},{self.end},{self.server.netmask},1h"


DEFAULT_NETS = (
    UplinkNet(10, IPv4Interface("10.10.0.250/24"), IPv4Address("10.10.0.10"),
              IPv4Address("10.10.0.19")),
    UplinkNet(20, IPv4Interface("10.20.0.250/24"), IPv4Address("10.20.0.10"),
              IPv4Address("10.20.0.19")),
)


@dataclass(frozen=True)
class Place:
    """Names and paths of a lab's uplink server."""

    switch_ns: str
    server_ns: str
    root_veth: str  # the port on the lab bridge
    dir: Path

    @property
    def db_sock(self) -> Path:
        return self.dir / "ovs" / "db.sock"

    @property
    def lease_file(self) -> Path:
        return self.dir / "dnsmasq" / "leases"

    @property
    def log_file(self) -> Path:
        return self.dir / "dnsmasq" / "dnsmasq.log"


def place(layout: LabLayout) -> Place:
    # The lab's prefixes: the name-based sweep of lab down finds all of it.
    return Place(switch_ns=f"{netns_prefix(layout.name)}{HOST}",
                 server_ns=f"{netns_prefix(layout.name)}{HOST}d",
                 root_veth=f"{veth_prefix(layout.name)}up", dir=layout.root / HOST)


def _in(ns: str | None, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={netlink.netns_path(ns)}", "--", *argv] if ns else argv


def _tx_off(dev: str, ns: str | None) -> None:
    # The userspace datapath does not fill in checksums left to offload: without this
    # dnsmasq's UDP replies reach the guests with bad checksums and are dropped.
    namespaces.run(_in(ns, ["ethtool", "-K", dev, "tx", "off"]))


def running(name: str) -> bool:
    return any(p.host == HOST and processes.is_alive(p) for p in lab.state_of(name).processes)


def start(name: str, nets: tuple[UplinkNet, ...] = DEFAULT_NETS) -> dict[str, Any]:
    """Start lab ``name``'s uplink DHCP server; return what :func:`status` says."""
    for net in nets:
        net.check()
    if len({n.vlan for n in nets}) != len(nets) or not nets:
        raise InvalidSpec("nets", [n.vlan for n in nets], "one or more distinct VLANs")
    layout, state = lab.layout_of(name), lab.state_of(name)
    if state.phase != "up":
        raise NotFound(f"lab {name!r} is not up (phase {state.phase})")
    if running(name):
        raise Conflict(f"lab {name!r} already has an uplink DHCP server",
                       hint=f"`ahvlite lab uplink-dhcp stop --name {name}` first")
    at = place(layout)
    stop(name)  # what an earlier, failed start left
    try:
        _build(layout, state, at, nets)
    except BaseException:
        stop(name)
        raise
    return status(name)


def _spawn(layout: LabLayout, state: LabState, at: Place, role: str, ns: str,
           argv: list[str]) -> None:
    record = processes.spawn(_in(ns, argv), log=at.dir / f"{role}.log", host=HOST, role=role)
    state.processes.append(record)
    state.save(layout.state_file)


def _build(layout: LabLayout, state: LabState, at: Place, nets: tuple[UplinkNet, ...]) -> None:
    state.netns += [at.switch_ns, at.server_ns]
    state.links.append(at.root_veth)
    state.save(layout.state_file)  # recorded before they exist, like every lab object
    ovs_dir = at.db_sock.parent
    ovs_dir.mkdir(parents=True, exist_ok=True)
    at.lease_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(at.lease_file.parent, user=DNSMASQ_USER)
    at.dir.chmod(0o755)
    for ns in (at.switch_ns, at.server_ns):
        netlink.ensure_netns(ns)

    # The switch: its own run/log/db directory, so nothing meets another OVS's files.
    env = ["env", f"OVS_RUNDIR={ovs_dir}", f"OVS_LOGDIR={ovs_dir}", f"OVS_DBDIR={ovs_dir}"]
    db = ovs_dir / "conf.db"
    db.unlink(missing_ok=True)
    namespaces.run(["ovsdb-tool", "create", str(db), "/usr/share/openvswitch/vswitch.ovsschema"])
    _spawn(layout, state, at, "ovsdb-server", at.switch_ns, [
        *env, "ovsdb-server", str(db), f"--remote=punix:{at.db_sock}",
        f"--unixctl={ovs_dir}/ovsdb-server.ctl", "--no-chdir"])
    if not wait_until(at.db_sock.exists, timeout_s=20, interval_s=0.05):
        raise OperationTimeout(f"uplink ovsdb-server did not create {at.db_sock}",
                               hint=f"see {at.dir}/ovsdb-server.log")
    namespaces.run(["ovs-vsctl", f"--db=unix:{at.db_sock}", "--no-wait", "init"])
    _spawn(layout, state, at, "ovs-vswitchd", at.switch_ns, [
        *env, "ovs-vswitchd", f"unix:{at.db_sock}", f"--unixctl={ovs_dir}/ovs-vswitchd.ctl",
        "--no-chdir"])

    netlink.create_veth_into(at.root_veth, TRUNK, at.switch_ns, bridge=layout.bridge)
    _tx_off(at.root_veth, None)
    with ovsdb(f"unix:{at.db_sock}") as api:
        api.add_br(BRIDGE, may_exist=True, datapath_type="netdev").execute(check_error=True)
        api.add_port(BRIDGE, TRUNK, may_exist=True).execute(check_error=True)
        for net in nets:
            near, far = f"a{net.vlan}", f"d{net.vlan}"
            netlink.create_veth_pair(near, far, far_ns=at.server_ns, ns=at.switch_ns)
            _tx_off(near, at.switch_ns)
            _tx_off(far, at.server_ns)
            netlink.add_address(far, str(net.server), ns=at.server_ns)
            ovs_ops.ensure_access_port(api, bridge=BRIDGE, name=near, tag=net.vlan,
                                       external_ids={})
        for port in (TRUNK, *(f"a{n.vlan}" for n in nets)):
            ovs_ops.wait_ofport(api, port)
    netlink.set_link_up(TRUNK, ns=at.switch_ns)
    _tx_off(TRUNK, at.switch_ns)

    # --no-ping: dnsmasq would ping a fresh address before offering it and hold the
    # offer back meanwhile (seen: longer than a 3-try udhcpc waits); nothing else on
    # these ranges can hold an address.
    _spawn(layout, state, at, "dnsmasq", at.server_ns, [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
        "--no-resolv", "--no-hosts", "--no-ping", "--bind-interfaces", "--except-interface=lo",
        *(f"--interface=d{n.vlan}" for n in nets),
        *(f"--dhcp-range={n.dhcp_range}" for n in nets),
        f"--dhcp-leasefile={at.lease_file}", "--log-dhcp", f"--log-facility={at.log_file}",
        f"--pid-file={at.lease_file.parent}/dnsmasq.pid", f"--user={DNSMASQ_USER}"])
    if not wait_until(lambda: "DHCP, IP range" in _read(at.log_file), timeout_s=10,
                      interval_s=0.05):
        raise OperationFailed(f"the uplink dnsmasq of lab {layout.name!r} did not start",
                              hint=f"see {at.dir}/dnsmasq.log and {at.log_file}")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def stop(name: str) -> dict[str, Any]:
    """End the uplink server's processes by PID, remove its namespaces and link."""
    layout, state = lab.layout_of(name), lab.state_of(name)
    at = place(layout)
    ours = [p for p in state.processes if p.host == HOST]
    victims = list(ours)
    for ns in (at.switch_ns, at.server_ns):
        victims += processes.pids_in_netns(netlink.netns_path(ns))
    processes.stop(victims)
    for ns in (at.switch_ns, at.server_ns):
        netlink.delete_netns(ns)
    netlink.delete_link(at.root_veth)
    state.processes = [p for p in state.processes if p.host != HOST]
    state.netns = [n for n in state.netns if n not in (at.switch_ns, at.server_ns)]
    state.links = [v for v in state.links if v != at.root_veth]
    state.save(layout.state_file)
    return {"name": name, "stopped": [f"{p.role}:{p.pid}" for p in ours]}


def leases(name: str) -> list[dict[str, str]]:
    """The uplink dnsmasq's leases: MAC, address, hostname (its lease file)."""
    out = []
    for line in _read(place(lab.layout_of(name)).lease_file).splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out.append({"mac": parts[1].lower(), "ip": parts[2], "hostname": parts[3]})
    return out


def log_text(name: str) -> str:
    """What the uplink dnsmasq logged (every DISCOVER it heard, with the MAC)."""
    return _read(place(lab.layout_of(name)).log_file)


def status(name: str) -> dict[str, Any]:
    layout, state = lab.layout_of(name), lab.state_of(name)
    at = place(layout)
    return {"name": name, "running": running(name), "bridge_port": at.root_veth,
            "namespaces": [at.switch_ns, at.server_ns], "lease_file": str(at.lease_file),
            "log_file": str(at.log_file),
            "processes": {p.role: {"pid": p.pid, "alive": processes.is_alive(p)}
                          for p in state.processes if p.host == HOST},
            "leases": leases(name)}
