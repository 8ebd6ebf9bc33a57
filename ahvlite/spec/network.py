"""Host networking vocabulary: OVS bridges with an uplink bond, VLAN networks, virbr0.

Field constraints (ranges, choices) are checked by pydantic and reported through
``spec.errors.build``; rules across fields raise InvalidSpec naming the field path
(``network.networks[1].vlan``), the value and what is allowed.
"""

from __future__ import annotations

import ipaddress
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


class VlanNetworkSpec(BaseModel):
    """A VM network: a name for one VLAN on one bridge."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=NET_NAME)]
    vlan: Annotated[int, Field(ge=1, le=4094)]
    bridge: Annotated[str, Field(pattern=BRIDGE_NAME)] = "br0"


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
