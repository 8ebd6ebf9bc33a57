"""Host networking vocabulary: OVS bridges with an uplink bond, VLAN networks, virbr0.

Field constraints (ranges, choices) are checked by pydantic and reported through
``spec.errors.build``; rules across fields raise InvalidSpec naming the field path
(``network.networks[1].vlan``), the value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ahvlite.errors import InvalidSpec

BondMode = Literal["active-backup", "balance-slb", "balance-tcp"]
LacpMode = Literal["off", "active", "passive"]
LacpTime = Literal["fast", "slow"]
DatapathType = Literal["system", "netdev"]

BRIDGE_NAME = r"^br[0-9]{1,3}$"
# Kernel interface names: at most 15 bytes, no '/', ':' or whitespace.
IFNAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$"
NET_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
VIRBR0_ADDRESS = "192.168.5.1/24"
MAX_PREFIX = 29
MIN_LEASE_S = 120  # dnsmasq's floor
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class BondSpec(BaseModel):
    """The uplink bond of a bridge (``br0-up`` on ``br0``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str | None, Field(pattern=IFNAME)] = None  # default: BRIDGE-up
    members: Annotated[list[Annotated[str, Field(pattern=IFNAME)]], Field(min_length=1)]
    mode: BondMode = "active-backup"
    lacp: LacpMode = "off"
    lacp_fallback_ab: bool = False
    lacp_time: LacpTime = "slow"
    updelay_ms: Annotated[int, Field(ge=0, le=600_000)] = 0
    downdelay_ms: Annotated[int, Field(ge=0, le=600_000)] = 0

    @field_validator("members")
    @classmethod
    def _distinct_members(cls, members: list[str]) -> list[str]:
        dupes = sorted({m for m in members if members.count(m) > 1})
        if dupes:
            raise ValueError(f"each member once (repeated: {', '.join(dupes)})")
        return members

    @model_validator(mode="after")
    def _tcp_needs_lacp(self) -> BondSpec:
        if self.mode == "balance-tcp" and self.lacp == "off":
            raise InvalidSpec("lacp", self.lacp,
                              "balance-tcp needs LACP (active or passive)",
                              hint="set lacp: active, or use balance-slb / active-backup")
        return self


class BridgeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=BRIDGE_NAME)] = "br0"
    datapath_type: DatapathType = "system"
    uplink: BondSpec | None = None

    @property
    def bond_name(self) -> str | None:
        if self.uplink is None:
            return None
        return self.uplink.name or f"{self.name}-up"


class IpPool(BaseModel):
    """A range of addresses IPAM hands out, both ends included (CLI ``--pool A-B``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address

    @property
    def size(self) -> int:
        return int(self.end) - int(self.start) + 1

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, ipaddress.IPv4Address) and self.start <= ip <= self.end

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


def parse_pool(text: str) -> IpPool:
    """``10.10.0.100-10.10.0.199`` (or one address) -> IpPool."""
    from ahvlite.spec.errors import build

    start, sep, end = text.strip().partition("-")
    try:
        return build(IpPool, start=start.strip(), end=(end if sep else start).strip())
    except InvalidSpec:
        raise InvalidSpec("pool", text, "a range of IPv4 addresses like "
                          "10.10.0.100-10.10.0.199") from None


class IpamSpec(BaseModel):
    """A managed network's layer 3: the subnet, what DHCP tells guests, and the pools
    IPAM allocates from. Rules across fields: :func:`check_ipam`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None = None
    # The DHCP responder's address, the same on every host; default the last usable.
    dhcp_server: ipaddress.IPv4Address | None = None
    pools: Annotated[list[IpPool], Field(min_length=1, max_length=64)]
    dns: Annotated[list[ipaddress.IPv4Address], Field(max_length=4)] = Field(
        default_factory=list)
    domain: str | None = None
    mtu: Annotated[int, Field(ge=576, le=9216)] | None = None
    lease_s: Annotated[int, Field(ge=MIN_LEASE_S, le=2**31 - 1)] = 3600

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        if value.prefixlen > MAX_PREFIX:
            raise InvalidSpec("ipam.subnet", str(value),
                              f"a subnet of prefix length {MAX_PREFIX} or shorter "
                              "(room for a gateway, a DHCP server and guests)")
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is not None and not DOMAIN_RE.fullmatch(value):
            raise InvalidSpec("ipam.domain", value, "a DNS domain like lab.example "
                              "(RFC 1123 labels: letters, digits, '-', joined by '.')")
        return value

    @property
    def server(self) -> ipaddress.IPv4Address:
        """The DHCP server address guests see (the last usable one by default)."""
        return self.dhcp_server or self.subnet.broadcast_address - 1

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pools)

    def in_pools(self, ip: ipaddress.IPv4Address) -> bool:
        return any(ip in p for p in self.pools)


class VlanNetworkSpec(BaseModel):
    """A VM network: a name for one VLAN on one bridge; managed when it has ``ipam``
    (addresses allocated by the cluster, DHCP answered on each host), unmanaged
    (an outside DHCP server, or none) without."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=NET_NAME)]
    vlan: Annotated[int, Field(ge=1, le=4094)]
    bridge: Annotated[str, Field(pattern=BRIDGE_NAME)] = "br0"
    ipam: IpamSpec | None = None


class Virbr0Spec(BaseModel):
    """The Linux bridge for host <-> CVM traffic; never connected to an OVS bridge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    address: ipaddress.IPv4Interface = ipaddress.IPv4Interface(VIRBR0_ADDRESS)


def default_bridges() -> list[BridgeSpec]:
    return [BridgeSpec(name="br0", uplink=BondSpec(members=["eth0", "eth1"]))]


class HostNetworkSpec(BaseModel):
    """What a host may override: its bridges (uplink NICs differ per host) and virbr0."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bridges: list[BridgeSpec] | None = None
    virbr0: Virbr0Spec | None = None


class NetworkSpec(BaseModel):
    """Cluster-wide networking: default bridges, the VLAN networks, virbr0."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bridges: list[BridgeSpec] = Field(default_factory=default_bridges)
    networks: list[VlanNetworkSpec] = Field(default_factory=list)
    virbr0: Virbr0Spec = Virbr0Spec()

    @model_validator(mode="after")
    def _consistent(self) -> NetworkSpec:
        check_network(self)
        return self

    def for_host(self, override: HostNetworkSpec | None) -> NetworkSpec:
        """This spec with a host's overrides applied (validated again as a whole)."""
        if override is None:
            return self
        return NetworkSpec(
            bridges=override.bridges if override.bridges is not None else self.bridges,
            networks=self.networks,
            virbr0=override.virbr0 if override.virbr0 is not None else self.virbr0)

    def network(self, name: str) -> VlanNetworkSpec | None:
        return next((n for n in self.networks if n.name == name), None)

    def warnings(self) -> list[str]:
        """Accepted but risky settings, for the CLI to print."""
        out = []
        for i, br in enumerate(self.bridges):
            up = br.uplink
            if up is not None and up.lacp != "off" and not up.lacp_fallback_ab:
                out.append(
                    f"network.bridges[{i}].uplink: LACP {up.lacp} without lacp_fallback_ab: "
                    f"until the switch negotiates LACP, {br.bond_name} carries no traffic "
                    "(set lacp_fallback_ab: true to fall back to active-backup)")
        return out


def check_network(spec: NetworkSpec, *, where: str = "network") -> None:
    """Rules across fields: unique names, VLAN ids, bridges that exist, members once."""
    bridges: dict[str, int] = {}
    for i, br in enumerate(spec.bridges):
        if br.name in bridges:
            raise InvalidSpec(f"{where}.bridges[{i}].name", br.name,
                              f"a bridge name used once (also bridges[{bridges[br.name]}])")
        bridges[br.name] = i
    owner: dict[str, str] = {}
    for i, br in enumerate(spec.bridges):
        if br.uplink is None:
            continue
        for m in br.uplink.members:
            if m in owner:
                raise InvalidSpec(f"{where}.bridges[{i}].uplink.members", m,
                                  f"a NIC not already in the uplink of {owner[m]}")
            if m in bridges:
                raise InvalidSpec(f"{where}.bridges[{i}].uplink.members", m,
                                  "a physical NIC, not a bridge")
            owner[m] = br.name
    names: dict[str, int] = {}
    vlans: dict[tuple[str, int], int] = {}
    for i, net in enumerate(spec.networks):
        if net.name in names:
            raise InvalidSpec(f"{where}.networks[{i}].name", net.name,
                              f"a network name used once (networks[{names[net.name]}] "
                              "has it already)")
        names[net.name] = i
        if net.bridge not in bridges:
            raise InvalidSpec(f"{where}.networks[{i}].bridge", net.bridge,
                              f"one of the bridges: {', '.join(sorted(bridges))}")
        key = (net.bridge, net.vlan)
        if key in vlans:
            other = spec.networks[vlans[key]].name
            raise InvalidSpec(f"{where}.networks[{i}].vlan", net.vlan,
                              f"a VLAN id not used by another network on {net.bridge} "
                              f"({other!r} has VLAN {net.vlan})")
        vlans[key] = i
        if net.ipam is not None:
            check_ipam(net.ipam, where=f"{where}.networks[{i}].ipam")


def check_ipam(ipam: IpamSpec, *, where: str = "ipam") -> None:
    """Pools inside the subnet (network and broadcast addresses excluded), each
    start <= end, no two overlapping; gateway and DHCP server inside, distinct, in no
    pool."""
    net = ipam.subnet
    first, last = net.network_address + 1, net.broadcast_address - 1
    inside = f"inside {net} without its network and broadcast addresses ({first}-{last})"
    for j, pool in enumerate(ipam.pools):
        field = f"{where}.pools[{j}]"
        if pool.start > pool.end:
            raise InvalidSpec(field, str(pool), "a range whose start is not after its end")
        if not (first <= pool.start and pool.end <= last):
            raise InvalidSpec(field, str(pool), f"a range {inside}")
        for k, other in enumerate(ipam.pools[:j]):
            if pool.start <= other.end and other.start <= pool.end:
                raise InvalidSpec(field, str(pool), f"a range not overlapping "
                                  f"pools[{k}] ({other})")
    fixed = (("gateway", ipam.gateway), ("dhcp_server", ipam.server))
    for name, ip in fixed:
        if ip is None:
            continue
        if not first <= ip <= last:
            raise InvalidSpec(f"{where}.{name}", str(ip), f"an address {inside}")
        holder = next((p for p in ipam.pools if ip in p), None)
        if holder is not None:
            raise InvalidSpec(f"{where}.{name}", str(ip),
                              f"an address in no pool (pool {holder} has it)",
                              hint="shrink the pool or pick another address")
    if ipam.gateway is not None and ipam.gateway == ipam.server:
        raise InvalidSpec(f"{where}.dhcp_server", str(ipam.server),
                          "an address other than the gateway",
                          hint="the DHCP server defaults to the last usable address; "
                               "set --dhcp-server or another --gateway")


class OvsdbSpec(BaseModel):
    """How to reach a host's OVSDB from wherever the CLI runs.

    ``ssl:ADDR:6640`` is the general path: ovsdb-server listens on the management
    address with mutual TLS, so only holders of a certificate from the cluster CA get
    in. ``unix:/path`` works where the socket is local (on the host itself).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    remote: Annotated[str, Field(pattern=r"^(ssl|unix):.+$")]
    ca_cert: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None

    @model_validator(mode="after")
    def _ssl_needs_pki(self) -> OvsdbSpec:
        if self.remote.startswith("ssl:"):
            for field in ("ca_cert", "certificate", "private_key"):
                if getattr(self, field) is None:
                    raise InvalidSpec(f"ovsdb.{field}", None,
                                      "a PEM file path (ssl: remotes use mutual TLS)")
        return self
