"""``ahvlite netagent``: this host's DHCP data plane, kept as the store says.

Every tick (0.5 s) the agent reads its inputs: the managed networks of the cluster spec
(the ``ClusterView``, kept fresh by a watch), the IPAM allocations of those networks
(read again only when the version of ``ipam/gen`` changes, one cheap get per tick), and
this host's OVSDB (VM ports with libvirt's ``attached-mac``, their OpenFlow ports and
VLAN tags, through one ovsdbapp connection whose replica OVSDB keeps current). From
them ``net.dhcp.plan`` makes one dnsmasq responder per managed network and each
bridge's whole OpenFlow table; what changed is applied with ``net.dhcp.responder`` and
``net.ovs.flows``. Every 5 s everything is applied again whether or not it seems to
have changed (a dnsmasq that died is restarted, flows someone removed come back).

Not inside the HA agent: that one feeds the watchdog and must never wait on ovs-ofctl
or netlink.

While the store cannot be read, nothing on the host changes: dnsmasq keeps answering
from its last hostsfile. A document that does not fit (a network, an allocation) is
skipped with a logged reason; the rest is served. A responder whose network is no
longer managed here (deleted, unmanaged, moved) is removed with its flows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from ipaddress import AddressValueError, IPv4Address
from typing import Any

from ahvlite.clock import SYSTEM, Clock
from ahvlite.cluster import ipam
from ahvlite.controller.periodic import Periodic
from ahvlite.errors import AhvliteError, HostUnreachable, InvalidSpec, NotFound
from ahvlite.kv import DocStore
from ahvlite.net.dhcp import plan, responder
from ahvlite.net.ovs import flows, ops
from ahvlite.net.ovs.api import ovsdb
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.network import VlanNetworkSpec

log = logging.getLogger(__name__)

TICK_S = 0.5
RESYNC_S = 5.0
LOCAL_OVSDB = "unix:/run/openvswitch/db.sock"
# Responder directories and pid files are named BRIDGE-VLAN (plan.place).
_KEY_RE = re.compile(r"^(br[0-9]{1,3})-([0-9]{1,4})$")


# -- pure: the store's documents as the planner's inputs ------------------------------

def dhcp_network(net: VlanNetworkSpec) -> plan.DhcpNetwork:
    """A managed network's IPAM settings as the responder needs them (InvalidSpec when
    they do not fit)."""
    assert net.ipam is not None
    i = net.ipam
    return plan.DhcpNetwork(
        name=net.name, bridge=net.bridge, vlan=net.vlan, subnet=i.subnet, server=i.server,
        gateway=i.gateway, dns=tuple(i.dns),
        # DNS names are case-insensitive; dnsmasq gets them lower-case only.
        domain=i.domain.lower() if i.domain else None, mtu=i.mtu, lease_s=i.lease_s)


def host_bridges(spec: ClusterSpec, host: str) -> list[str]:
    """The OVS bridges ``host`` has by the spec (its own override, or the defaults)."""
    override = next((h.network for h in spec.hosts if h.name == host), None)
    # Not NetworkSpec.for_host: that refuses the whole host when a network's bridge is
    # missing from it; here only that network is left out (dhcp_networks says why).
    bridges = (override.bridges if override is not None and override.bridges is not None
               else spec.network.bridges)
    return [b.name for b in bridges]


def dhcp_networks(spec: ClusterSpec, host: str) -> tuple[list[plan.DhcpNetwork], list[str]]:
    """The managed networks ``host`` answers DHCP for, and why others are left out."""
    bridges = set(host_bridges(spec, host))
    out: list[plan.DhcpNetwork] = []
    skipped: list[str] = []
    for net in spec.network.networks:
        if net.ipam is None:
            continue
        if net.bridge not in bridges:
            skipped.append(f"network {net.name}: bridge {net.bridge} is not one of "
                           f"{host}'s ({', '.join(sorted(bridges)) or 'none'})")
            continue
        try:
            out.append(dhcp_network(net))
        except InvalidSpec as exc:
            skipped.append(f"network {net.name} skipped: {exc.message}")
    return out, skipped


def plan_allocations(network: str, allocs: list[ipam.Allocation]
                     ) -> tuple[list[plan.Allocation], list[str]]:
    """The store's allocations as the planner's (typed, checked), and the ones that are
    not (with the reason)."""
    out: list[plan.Allocation] = []
    skipped: list[str] = []
    for a in allocs:
        try:
            out.append(plan.Allocation(a.mac, IPv4Address(a.ip), a.vm))
        except (InvalidSpec, AddressValueError, ValueError) as exc:
            why = exc.message if isinstance(exc, InvalidSpec) else str(exc)
            skipped.append(f"network {network}: allocation {a.ip!r} for {a.mac!r} "
                           f"skipped: {why}")
    return out, skipped


def unreadable(store: DocStore, allocs: dict[str, list[ipam.Allocation]]) -> list[str]:
    """The allocation keys ``ipam.allocations`` left out (a document that is not one):
    names only, so the reason can be logged."""
    out = []
    for net, held in allocs.items():
        have = {a.mac for a in held}
        out += [f"{ipam.mac_key(net, name)}: not an allocation document, skipped"
                for name in store.names(f"{ipam.net_key(net)}/mac") if name.lower() not in have]
    return out


def place_of_key(key: str, where: HostPlaces) -> plan.ResponderPlace | None:
    """The responder place a directory or pid file named ``key`` belongs to."""
    m = _KEY_RE.fullmatch(key)
    if not m or not 1 <= int(m.group(2)) <= 4094:
        return None
    return plan.place(m.group(1), int(m.group(2)), paths=where.paths,
                      netns_prefix=where.netns_prefix)


# -- the host's side ------------------------------------------------------------------

def _bridge_switch(bridge: str) -> str:
    return bridge  # ovs-vswitchd's own management socket for the bridge


@dataclass(frozen=True)
class HostPlaces:
    """Where this host's data plane lives; tests point it at a sandbox."""

    ovsdb: str = LOCAL_OVSDB
    paths: plan.ResponderPaths = field(default_factory=plan.ResponderPaths)
    netns_prefix: str = "ahvd"
    host_ns: str | None = None  # the network namespace of ovs-vswitchd (None: ours)
    switch: Callable[[str], str] = _bridge_switch  # bridge -> ovs-ofctl's target


@dataclass(frozen=True)
class Observed:
    """What one look at OVSDB showed: enough to tell whether anything must change."""

    bridges: tuple[str, ...]
    ports: dict[str, tuple[plan.VmPort, ...]]  # bridge -> its VM ports
    responders: dict[str, int]  # key (br0-10) of a responder port in OVSDB -> its ofport
    skipped: tuple[str, ...] = ()


def observe(api: Any, where: HostPlaces) -> Observed:
    bridges, ifaces = ops.observe_ovs(api)
    ofports = ops.ofports(api)
    by_iface = {i.name: i for i in ifaces}
    ports: dict[str, tuple[plan.VmPort, ...]] = {}
    found: dict[str, int] = {}
    skipped: list[str] = []
    for b in bridges:
        vm, why = plan.vm_ports(b, ifaces, ofports)
        ports[b.name] = tuple(vm)
        skipped += why
        for p in b.ports:
            iface = by_iface.get(p.interfaces[0]) if len(p.interfaces) == 1 else None
            if iface is None or iface.external_ids.get("ahvlite-role") != "dhcp":
                continue
            key = f"{b.name}-{iface.external_ids.get('ahvlite-vlan', '')}"
            if place_of_key(key, where) is not None:
                found[key] = ofports.get(iface.name, -1)
    return Observed(tuple(b.name for b in bridges), ports, found, tuple(skipped))


class NetAgent:
    """The loop of one host. ``step`` is one tick (tests call it directly)."""

    def __init__(self, store: DocStore, spec: Callable[[], ClusterSpec], host: str, *,
                 where: HostPlaces | None = None, clock: Clock = SYSTEM,
                 tick_s: float = TICK_S, resync_s: float = RESYNC_S,
                 connect: Callable[[str], AbstractContextManager[Any]] = ovsdb) -> None:
        self.store = store
        self.spec = spec
        self.host = host
        self.where = where or HostPlaces()
        self.clock = clock
        self.resync_s = resync_s
        self.connect = connect
        self.loop = Periodic(f"netagent-{host}", self.step, tick_s, clock=clock)
        self._conn: ExitStack | None = None
        self._api: Any = None
        self._gen: int | None = None
        self._allocs: dict[str, list[ipam.Allocation]] = {}
        self._unreadable: list[str] = []
        self._applied: Any = None
        self._next_resync = float("-inf")
        self._said: set[str] = set()
        self._outage = False

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._api = None, None

    # -- one tick ------------------------------------------------------------------

    def step(self) -> str:
        """Apply what changed (everything, once a resync is due); return what was done:
        ``store-unavailable``, ``no-cluster``, ``ovsdb-unavailable``, ``unchanged`` or
        ``applied``."""
        resync = self.clock.monotonic() >= self._next_resync
        got = self._read_store()
        if isinstance(got, str):
            return got
        nets, allocs, reasons = got
        try:
            api = self._ovsdb()
        except HostUnreachable as exc:  # ovsdb-server not (yet) running: say so once
            self._say([f"{exc.message}: changing nothing"])
            return "ovsdb-unavailable"
        try:
            seen = observe(api, self.where)
        except Exception:
            self.close()  # a dropped OVSDB connection: open it again next tick
            raise
        desired = []
        for n in nets:
            if n.bridge in seen.bridges:
                desired.append(self._responder(n, allocs[n.name], reasons))
            else:
                reasons.append(f"network {n.name}: bridge {n.bridge} is not in this host's "
                               "OVSDB")
        state = (tuple(desired), seen.bridges, seen.ports, seen.responders)
        self._say([*reasons, *seen.skipped])
        if not resync and state == self._applied:
            return "unchanged"
        self._apply(api, nets, allocs, desired, seen)
        after = observe(api, self.where)
        self._applied = (tuple(desired), after.bridges, after.ports, after.responders)
        self._next_resync = self.clock.monotonic() + self.resync_s
        return "applied"

    def _read_store(self) -> (
            str | tuple[list[plan.DhcpNetwork], dict[str, list[plan.Allocation]], list[str]]):
        try:
            spec = self.spec()
            nets, reasons = dhcp_networks(spec, self.host)
            gen = ipam.generation(self.store)
            # ipam/gen changes in every allocate and release transaction: allocations are
            # read again only then (1000 NICs cost ZooKeeper about a second).
            if gen != self._gen or set(self._allocs) != {n.name for n in nets}:
                self._allocs = {n.name: ipam.allocations(self.store, n.name) for n in nets}
                self._unreadable = unreadable(self.store, self._allocs)
                self._gen = gen
        except NotFound as exc:
            self._say([f"no cluster in the store yet ({exc.message}): changing nothing"])
            return "no-cluster"
        except AhvliteError as exc:
            if not self._outage:
                log.warning("netagent %s: the store cannot be read (%s): changing nothing, "
                            "dnsmasq answers from its last hostsfile", self.host, exc.message)
            self._outage = True
            return "store-unavailable"
        if self._outage:
            log.warning("netagent %s: the store answers again", self.host)
            self._outage = False
        allocs: dict[str, list[plan.Allocation]] = {}
        reasons += self._unreadable
        for n in nets:
            allocs[n.name], bad = plan_allocations(n.name, self._allocs.get(n.name, []))
            reasons += bad
        return nets, allocs, reasons

    def _responder(self, net: plan.DhcpNetwork, allocs: list[plan.Allocation],
                   reasons: list[str]) -> plan.Responder:
        r, skipped = plan.responder(net, allocs, host=self.host, paths=self.where.paths,
                                    netns_prefix=self.where.netns_prefix)
        reasons += skipped
        return r

    def _ovsdb(self) -> Any:
        if self._api is None:
            stack = ExitStack()
            self._api = stack.enter_context(self.connect(self.where.ovsdb))
            self._conn = stack
        return self._api

    def _apply(self, api: Any, nets: list[plan.DhcpNetwork],
               allocs: dict[str, list[plan.Allocation]], desired: list[plan.Responder],
               seen: Observed) -> None:
        want = {r.place.key for r in desired}
        for at in self._places(seen):
            if at.key not in want:
                log.warning("netagent %s: removing the responder %s (its network is no "
                            "longer managed here)", self.host, at.key)
                def remove(at: plan.ResponderPlace = at) -> None:
                    responder.remove(api, at, host_ns=self.where.host_ns)

                self._guard(f"removing responder {at.key}", remove)
        ready: dict[str, tuple[int, str]] = {}
        for r in desired:

            def up(r: plan.Responder = r) -> None:
                done = responder.ensure(api, r, host_ns=self.where.host_ns)
                if done != "unchanged":
                    log.warning("netagent %s: responder %s %s", self.host, r.place.key, done)
                ready[r.network] = (ops.wait_ofport(api, r.place.host_veth), r.mac)

            self._guard(f"responder {r.place.key}", up)
        for bridge in seen.bridges:
            table = plan.flow_table(bridge, nets, allocs, list(seen.ports.get(bridge, ())),
                                    ready)

            def install(bridge: str = bridge, lines: list[str] = table.lines) -> None:
                changes = flows.install(lines, switch=self.where.switch(bridge))
                if changes:
                    log.warning("netagent %s: %s: %d flow change(s)", self.host, bridge,
                                len(changes))

            self._guard(f"flows of {bridge}", install)

    def _places(self, seen: Observed) -> Iterator[plan.ResponderPlace]:
        """Every responder this host has: ports in OVSDB, and files (a responder whose
        port is gone still has its dnsmasq)."""
        keys = set(seen.responders)
        for d in (self.where.paths.conf_dir, self.where.paths.run_dir):
            if d.is_dir():
                keys |= {p.name.removesuffix(".pid") for p in d.iterdir()}
        for key in sorted(keys):
            at = place_of_key(key, self.where)
            if at is not None:
                yield at

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        """One part failing (a responder, a bridge's flows) must not hold up the others:
        logged, and tried again at the next resync (not every tick)."""
        try:
            fn()
        except AhvliteError as exc:
            log.warning("netagent %s: %s: %s", self.host, what, exc.message)

    def _say(self, reasons: list[str]) -> None:
        """Log each reason once while it holds (not every tick)."""
        new = set(reasons)
        for line in sorted(new - self._said):
            log.warning("netagent %s: %s", self.host, line)
        self._said = new
