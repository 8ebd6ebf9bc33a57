"""A host's DHCP data plane from plain data (pure, no I/O).

Inputs are what the per-host agent reads: each managed network's IPAM settings, its
allocations (MAC -> address, from the store) and the host's OVS ports. Outputs:

- one ``Responder`` per managed network on a bridge: the names of its namespace and
  veth, its MAC and address, and the exact dnsmasq config, hosts and options text;
- the bridge's whole OpenFlow table as ``ovs-ofctl`` lines (``flow_table``).

Everything written into dnsmasq files comes from typed, checked values (addresses,
MACs by regex, ints, a domain by regex), never from store text as such, so a hostile
document cannot inject a dnsmasq directive. An allocation that does not fit its
network is skipped with a reason rather than failing the whole host.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from ahvlite.errors import InvalidSpec
from ahvlite.net.plan import ObservedBridge, ObservedInterface
from ahvlite.spec.vm import MAC_RE

# RFC 1123 labels, dot-separated; the only free text that reaches dnsmasq.
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
                       r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
DEAD_VLAN = 4095  # OVS never forwards NORMAL traffic to a port tagged with it
NS_VETH = "dhcp0"
DNSMASQ_USER = "dnsmasq"
MIN_LEASE_S = 120  # dnsmasq's floor
BROADCAST = "ff:ff:ff:ff:ff:ff"

# Cookies 0xa417_KKKK_BBBB_VVVV: K flow kind, B bridge number, V VLAN, so
# `ovs-ofctl dump-flows br0 cookie=C/0xffff0000ffffffff` shows one network's flows.
COOKIE_BASE = 0xA417 << 48
KIND_BASE, KIND_NETWORK, KIND_PORT, KIND_BACKSTOP = 0, 1, 2, 3
NETWORK_COOKIE_MASK = 0xFFFF0000FFFFFFFF


def cookie(kind: int, bridge_no: int, vlan: int) -> int:
    return COOKIE_BASE | (kind << 32) | (bridge_no << 16) | vlan


def _mac(field_name: str, value: str) -> str:
    if not isinstance(value, str) or not MAC_RE.fullmatch(value) or int(value[:2], 16) & 1:
        raise InvalidSpec(field_name, value, "a unicast MAC like 52:54:00:12:34:56")
    return value.lower()


# -- inputs -------------------------------------------------------------------

@dataclass(frozen=True)
class DhcpNetwork:
    """A managed network's IPAM settings, as the responder needs them."""

    name: str
    bridge: str
    vlan: int
    subnet: IPv4Network
    server: IPv4Address  # the anycast dhcp_server address, the same on every host
    gateway: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    mtu: int | None = None
    lease_s: int = 3600

    def __post_init__(self) -> None:
        if not BRIDGE_RE.fullmatch(self.bridge):
            raise InvalidSpec("network.bridge", self.bridge, "an OVS bridge name")
        if not 1 <= self.vlan <= 4094:
            raise InvalidSpec("network.vlan", self.vlan, "1-4094")
        hosts = (self.subnet.network_address, self.subnet.broadcast_address)
        if self.server not in self.subnet or self.server in hosts:
            raise InvalidSpec("network.ipam.dhcp_server", str(self.server),
                              f"a host address inside {self.subnet}")
        if self.gateway is not None and (self.gateway not in self.subnet
                                         or self.gateway in hosts):
            raise InvalidSpec("network.ipam.gateway", str(self.gateway),
                              f"a host address inside {self.subnet}")
        if self.domain is not None and not DOMAIN_RE.fullmatch(self.domain):
            raise InvalidSpec("network.ipam.domain", self.domain,
                              "a lower-case DNS domain (RFC 1123 labels)")
        if self.mtu is not None and not 576 <= self.mtu <= 9216:
            raise InvalidSpec("network.ipam.mtu", self.mtu, "576-9216")
        if not MIN_LEASE_S <= self.lease_s <= 2**31 - 1:
            raise InvalidSpec("network.ipam.lease_s", self.lease_s, f"{MIN_LEASE_S}-{2**31 - 1}")
        if len(self.dns) > 4:
            raise InvalidSpec("network.ipam.dns", [str(d) for d in self.dns], "at most 4")


@dataclass(frozen=True)
class Allocation:
    mac: str
    ip: IPv4Address
    vm: str = ""  # for messages only: never written to a file

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", _mac("allocation.mac", self.mac))
        if not isinstance(self.ip, IPv4Address):
            raise InvalidSpec("allocation.ip", self.ip, "an IPv4 address")


@dataclass(frozen=True)
class VmPort:
    """A VM's port on the bridge, as OVSDB shows it (the tap libvirt added)."""

    name: str
    ofport: int
    mac: str  # Interface external_ids attached-mac
    tag: int | None  # access VLAN, or the native VLAN of a trunk
    trunk: bool = False  # vlan_mode=native-untagged: only untagged frames are the VM's

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", _mac(f"port {self.name} mac", self.mac))
        if not 1 <= self.ofport <= 0xFEFF:  # OpenFlow's physical port range
            raise InvalidSpec(f"port {self.name} ofport", self.ofport, "1-65279")


def vm_ports(bridge: ObservedBridge, interfaces: tuple[ObservedInterface, ...],
             ofports: dict[str, int]) -> tuple[list[VmPort], list[str]]:
    """The VM ports of ``bridge`` as OVSDB shows them, and why others were left out.

    A VM port is one interface with libvirt's ``attached-mac`` and an OpenFlow port;
    its VLAN is the access tag, or a trunk's native VLAN (vlan_mode native-*).
    """
    by_name = {i.name: i for i in interfaces}
    out: list[VmPort] = []
    skipped: list[str] = []
    for p in bridge.ports:
        iface = by_name.get(p.interfaces[0]) if len(p.interfaces) == 1 else None
        mac = iface.external_ids.get("attached-mac") if iface else None
        if iface is None or mac is None or p.tag is None:
            continue  # uplink bond, the bridge's own port, a responder, a trunk-only port
        if iface.name not in ofports:
            skipped.append(f"port {p.name}: no OpenFlow port yet")
            continue
        trunk = (p.vlan_mode or "").startswith("native") or bool(p.trunks)
        try:
            out.append(VmPort(iface.name, ofports[iface.name], mac, p.tag, trunk=trunk))
        except InvalidSpec as exc:
            skipped.append(f"port {p.name}: {exc.message}")
    return out, skipped


# -- responders -----------------------------------------------------------------

@dataclass(frozen=True)
class ResponderPaths:
    """Where responders keep their files; tests point them at a scratch directory."""

    conf_dir: Path = Path("/var/lib/ahvlite/dhcp")
    run_dir: Path = Path("/run/ahvlite/dhcp")
    log_dir: Path = Path("/var/log/ahvlite")


@dataclass(frozen=True)
class ResponderPlace:
    """Where the responder of (bridge, VLAN) lives: every name it owns on the host.

    Enough to stop and remove it when its network is no longer managed here.
    """

    bridge: str
    vlan: int
    netns: str
    host_veth: str  # the end in the bridge (OVSDB Port tagged DEAD_VLAN)
    ns_veth: str  # the end inside netns, where dnsmasq listens
    key: str  # "br0-10": names the files
    conf_path: Path
    hosts_path: Path
    opts_path: Path
    pid_path: Path
    log_path: Path


@dataclass(frozen=True)
class Responder:
    network: str
    place: ResponderPlace
    mac: str
    address: IPv4Interface
    conf: str
    hosts: str
    opts: str


def place(bridge: str, vlan: int, *, paths: ResponderPaths = ResponderPaths(),
          netns_prefix: str = "ahvd") -> ResponderPlace:
    key = f"{bridge}-{vlan}"
    conf_dir = paths.conf_dir / key
    return ResponderPlace(
        bridge=bridge, vlan=vlan, netns=f"{netns_prefix}-{key}",
        host_veth=f"ahd{bridge_number(bridge)}v{vlan}", ns_veth=NS_VETH, key=key,
        conf_path=conf_dir / "dnsmasq.conf", hosts_path=conf_dir / "hosts",
        opts_path=conf_dir / "opts", pid_path=paths.run_dir / f"{key}.pid",
        log_path=paths.log_dir / f"dhcp-{key}.log")


def bridge_number(bridge: str) -> int:
    """br0 -> 0, br12 -> 12; other names hash into 100-999 (a cookie field, a veth name)."""
    m = re.fullmatch(r"br(\d{1,3})", bridge)
    if m:
        return int(m.group(1))
    return 100 + int(hashlib.sha256(bridge.encode()).hexdigest(), 16) % 900


def responder_mac(host: str, bridge: str, vlan: int) -> str:
    """Deterministic, locally administered: the planner never reads it back."""
    digest = hashlib.sha256(f"{host}/{bridge}/{vlan}".encode()).digest()[:4]
    return "02:ad:" + ":".join(f"{b:02x}" for b in digest)


def valid_allocations(net: DhcpNetwork, allocations: list[Allocation]
                      ) -> tuple[list[Allocation], list[str]]:
    """The allocations that fit ``net`` (sorted by address), and why the others do not."""
    ok: list[Allocation] = []
    skipped: list[str] = []
    reserved = {net.subnet.network_address, net.subnet.broadcast_address, net.server,
                net.gateway}
    seen_ip: dict[IPv4Address, str] = {}
    seen_mac: set[str] = set()
    for a in sorted(allocations, key=lambda a: (a.ip, a.mac)):
        why = None
        if a.ip not in net.subnet:
            why = f"outside {net.subnet}"
        elif a.ip in reserved:
            why = "a reserved address (network, broadcast, gateway or DHCP server)"
        elif a.ip in seen_ip:
            why = f"address already given to {seen_ip[a.ip]}"
        elif a.mac in seen_mac:
            why = "MAC already has an address"
        if why:
            skipped.append(f"network {net.name}: allocation {a.ip} for {a.mac} "
                           f"({a.vm or '?'}) skipped: {why}")
            continue
        seen_ip[a.ip] = a.mac
        seen_mac.add(a.mac)
        ok.append(a)
    return ok, skipped


def dnsmasq_conf(*, interface: str, subnet: IPv4Network, hosts_path: Path, opts_path: Path,
                 pid_path: Path, log_path: Path) -> str:
    """Static-only, authoritative: answers only MACs in the hostsfile, and ACKs a RENEW it
    has no lease for (after migration or a restart the guest keeps its address)."""
    lines = [
        "port=0",
        f"interface={interface}",
        "bind-interfaces",
        "except-interface=lo",
        f"dhcp-range=set:net,{subnet.network_address},static,{subnet.netmask}",
        "dhcp-authoritative",
        f"dhcp-hostsfile={hosts_path}",
        f"dhcp-optsfile={opts_path}",
        "leasefile-ro",
        "no-resolv",
        "no-hosts",
        "log-dhcp",
        f"log-facility={log_path}",
        f"pid-file={pid_path}",
        # Debian's dnsmasq-base would drop to "nobody", shared with other daemons; the
        # package makes a user of its own (so does EL's dnsmasq).
        f"user={DNSMASQ_USER}",
    ]
    return "\n".join(lines) + "\n"


def hosts_text(net: DhcpNetwork, allocations: list[Allocation]) -> str:
    """Every allocation of the network (not only local VMs): a VM arriving by migration
    or HA restart is answered at once. The lease time is per line, so it is a reload."""
    return "".join(f"{a.mac},{a.ip},{net.lease_s}\n" for a in allocations)


def opts_text(net: DhcpNetwork) -> str:
    # Without a gateway, an empty router option stops dnsmasq offering itself as router.
    lines = [f"tag:net,option:router,{net.gateway}" if net.gateway
             else "tag:net,option:router"]
    if net.dns:
        lines.append("tag:net,option:dns-server," + ",".join(str(d) for d in net.dns))
    if net.domain:
        lines.append(f"tag:net,option:domain-name,{net.domain}")
    if net.mtu:
        lines.append(f"tag:net,option:mtu,{net.mtu}")
    return "\n".join(lines) + "\n"


def responder(net: DhcpNetwork, allocations: list[Allocation], *, host: str,
              paths: ResponderPaths = ResponderPaths(), netns_prefix: str = "ahvd"
              ) -> tuple[Responder, list[str]]:
    """The responder of ``net`` on ``host``, and the allocations it skipped (reasons)."""
    ok, skipped = valid_allocations(net, allocations)
    at = place(net.bridge, net.vlan, paths=paths, netns_prefix=netns_prefix)
    return Responder(
        network=net.name, place=at, mac=responder_mac(host, net.bridge, net.vlan),
        address=IPv4Interface(f"{net.server}/{net.subnet.prefixlen}"),
        conf=dnsmasq_conf(interface=at.ns_veth, subnet=net.subnet, hosts_path=at.hosts_path,
                          opts_path=at.opts_path, pid_path=at.pid_path,
                          log_path=at.log_path),
        hosts=hosts_text(net, ok), opts=opts_text(net)), skipped


# -- OpenFlow -------------------------------------------------------------------

@dataclass(frozen=True)
class Flow:
    table: int
    priority: int
    match: str  # "" or comma-separated fields
    actions: str
    cookie: int

    def line(self) -> str:
        match = f"{self.match}," if self.match else ""
        return (f"cookie={self.cookie:#x},table={self.table},priority={self.priority},"
                f"{match}actions={self.actions}")


@dataclass(frozen=True)
class FlowPlan:
    lines: list[str]
    skipped: list[str] = field(default_factory=list)


def flow_table(bridge: str, networks: list[DhcpNetwork],
               allocations: dict[str, list[Allocation]], ports: list[VmPort],
               responders: dict[str, tuple[int, str]]) -> FlowPlan:
    """The whole OpenFlow table of ``bridge``.

    ``allocations`` and ``responders`` are keyed by network name; a responder is
    (ofport, MAC) of its veth in the bridge, absent while it is not up yet (its port
    then gets no DHCP path, only the drops). NORMAL stays the switch: these flows only
    filter in front of it. Canonical OpenFlow 1.4 syntax (set_field, not mod_dl_dst),
    so installing the same table again changes nothing on the switch.
    """
    b = bridge_number(bridge)
    flows = [Flow(0, 0, "", "NORMAL", cookie(KIND_BASE, b, 0))]
    skipped: list[str] = []
    nets = sorted((n for n in networks if n.bridge == bridge), key=lambda n: n.vlan)
    if nets:
        flows += [Flow(10, 0, "", "drop", cookie(KIND_BASE, b, 0)),
                  Flow(30, 0, "", "drop", cookie(KIND_BASE, b, 0))]
    for net in nets:
        ok, bad = valid_allocations(net, allocations.get(net.name, []))
        skipped += bad
        flows += _network_flows(net, b, ok, [p for p in ports if p.tag == net.vlan],
                                responders.get(net.name))
    flows.sort(key=lambda f: (f.table, -f.priority, f.line()))
    return FlowPlan([f.line() for f in flows], skipped)


def _network_flows(net: DhcpNetwork, b: int, allocs: list[Allocation], ports: list[VmPort],
                   resp: tuple[int, str] | None) -> list[Flow]:
    v = net.vlan
    cn, cp, cb = (cookie(k, b, v) for k in (KIND_NETWORK, KIND_PORT, KIND_BACKSTOP))
    flows = [
        # Tagged DHCP on the managed VLAN (uplink, or a trunk NIC): never crosses br0.
        Flow(0, 190, f"udp,dl_vlan={v},tp_src=68,tp_dst=67", "drop", cn),
        Flow(0, 190, f"udp,dl_vlan={v},tp_src=67,tp_dst=68", "drop", cn),
    ]
    # Backstop: a port not classified yet (just started, migrated in) never leaks DHCP.
    flows += [Flow(0, 50, f"udp,dl_src={a.mac},tp_src=68,tp_dst=67", "drop", cb)
              for a in allocs]
    by_mac = {a.mac: a for a in allocs}
    ports = sorted(ports, key=lambda p: p.ofport)
    if resp is not None:
        r = resp[0]
        flows.append(Flow(0, 200, f"in_port={r}", "resubmit(,30)", cn))
        if ports:
            out = ",".join(f"output:{p.ofport}" for p in ports)
            flows.append(Flow(30, 90, f"in_port={r},dl_dst={BROADCAST}", out, cn))
    for p in ports:
        flows += _port_flows(net, p, by_mac.get(p.mac), resp, cp)
    return flows


def _port_flows(net: DhcpNetwork, p: VmPort, alloc: Allocation | None,
                resp: tuple[int, str] | None, c: int) -> list[Flow]:
    P, M = p.ofport, p.mac
    # A trunk NIC's tagged frames belong to other VLANs: only untagged ones are filtered.
    classify = f"in_port={P},vlan_tci=0x0000/0x1000" if p.trunk else f"in_port={P}"
    flows = [Flow(0, 100, classify, "resubmit(,10)", c),
             Flow(10, 130, f"udp,in_port={P},tp_src=67,tp_dst=68", "drop", c)]
    if resp is not None:
        r, rmac = resp
        # eth_dst rewritten: a unicast RENEW meant for another host's responder (the
        # VM migrated) is answered here.
        flows.append(Flow(10, 120, f"udp,in_port={P},dl_src={M},tp_src=68,tp_dst=67",
                          f"set_field:{rmac}->eth_dst,output:{r}", c))
        flows.append(Flow(30, 100, f"in_port={r},dl_dst={M}", f"output:{P}", c))
    if alloc is None:
        return flows
    A = alloc.ip
    if resp is not None:
        # ARP for the server (and replies to it) goes to the responder, never NORMAL.
        flows.append(Flow(10, 115, f"arp,in_port={P},dl_src={M},arp_spa={A},"
                                   f"arp_sha={M},arp_tpa={net.server}",
                          f"output:{resp[0]}", c))
    flows += [
        Flow(10, 110, f"arp,in_port={P},dl_src={M},arp_spa={A},arp_sha={M}", "NORMAL", c),
        # RFC 5227 address probe
        Flow(10, 110, f"arp,in_port={P},dl_src={M},arp_spa=0.0.0.0,arp_sha={M}", "NORMAL", c),
        Flow(10, 100, f"ip,in_port={P},dl_src={M},nw_src={A}", "NORMAL", c),
        # QEMU announces a migrated guest by RARP from its MAC
        Flow(10, 100, f"rarp,in_port={P},dl_src={M}", "NORMAL", c),
    ]
    return flows
