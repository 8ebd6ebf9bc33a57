"""Desired host networking vs what a host has -> a list of typed steps (pure, no I/O).

``plan_host`` compares a NetworkSpec with an ObservedHost (read from OVSDB and
netlink by the callers) and returns the steps that make the host match. An empty
plan means the host already matches: applying it touches nothing.

Steps are ordered so the uplink is never lost: members are added to a bond before
any member is removed, and removals are a separate phase that the applier runs only
once a remaining member has carrier.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from ahvlite.errors import InvalidSpec
from ahvlite.spec.network import BondSpec, BridgeSpec, NetworkSpec

# The Port.other_config keys ahvlite owns on a bond; any other key is left alone.
BOND_OTHER_CONFIG_KEYS = ("bond-detect-mode", "lacp-fallback-ab", "lacp-time")


# -- what a host has ----------------------------------------------------------

@dataclass(frozen=True)
class ObservedInterface:
    name: str
    type: str = ""
    link_state: str | None = None  # up / down, from OVSDB Interface.link_state
    admin_state: str | None = None
    mac_in_use: str | None = None
    lacp_current: bool | None = None
    error: str | None = None
    external_ids: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ObservedPort:
    name: str
    interfaces: tuple[str, ...]
    bond_mode: str | None = None
    lacp: str | None = None
    bond_updelay_ms: int = 0
    bond_downdelay_ms: int = 0
    other_config: dict[str, str] = field(default_factory=dict)
    tag: int | None = None
    trunks: tuple[int, ...] = ()
    vlan_mode: str | None = None
    active_member: str | None = None


@dataclass(frozen=True)
class ObservedBridge:
    name: str
    datapath_type: str
    ports: tuple[ObservedPort, ...] = ()

    def port(self, name: str) -> ObservedPort | None:
        return next((p for p in self.ports if p.name == name), None)


@dataclass(frozen=True)
class ObservedVirbr0:
    exists: bool
    addresses: tuple[str, ...] = ()  # CIDR
    attached_to_ovs: bool = False


@dataclass(frozen=True)
class ObservedHost:
    bridges: tuple[ObservedBridge, ...] = ()
    interfaces: tuple[ObservedInterface, ...] = ()
    nics: frozenset[str] | None = None  # kernel links on the host; None: not known
    virbr0: ObservedVirbr0 | None = None  # None: not known, virbr0 is not planned

    def bridge(self, name: str) -> ObservedBridge | None:
        return next((b for b in self.bridges if b.name == name), None)

    def interface(self, name: str) -> ObservedInterface | None:
        return next((i for i in self.interfaces if i.name == name), None)

    def port_anywhere(self, name: str) -> tuple[ObservedBridge, ObservedPort] | None:
        for br in self.bridges:
            p = br.port(name)
            if p is not None:
                return br, p
        return None


# -- steps ----------------------------------------------------------------------

@dataclass(frozen=True)
class BondSettings:
    mode: str
    lacp: str
    updelay_ms: int
    downdelay_ms: int
    other_config: tuple[tuple[str, str], ...]  # only BOND_OTHER_CONFIG_KEYS, sorted

    @classmethod
    def from_spec(cls, bond: BondSpec) -> BondSettings:
        other = {"bond-detect-mode": "carrier",
                 "lacp-fallback-ab": "true" if bond.lacp_fallback_ab else "false",
                 "lacp-time": bond.lacp_time}
        return cls(mode=bond.mode, lacp=bond.lacp, updelay_ms=bond.updelay_ms,
                   downdelay_ms=bond.downdelay_ms, other_config=tuple(sorted(other.items())))

    @classmethod
    def from_port(cls, port: ObservedPort) -> BondSettings:
        other = {k: v for k, v in port.other_config.items() if k in BOND_OTHER_CONFIG_KEYS}
        return cls(mode=port.bond_mode or "active-backup", lacp=port.lacp or "off",
                   updelay_ms=port.bond_updelay_ms, downdelay_ms=port.bond_downdelay_ms,
                   other_config=tuple(sorted(other.items())))


@dataclass(frozen=True)
class Step:
    """One change; ``phase`` 2 steps run only after phase 1 has taken effect."""

    @property
    def kind(self) -> str:
        return type(self).__name__

    @property
    def phase(self) -> int:
        return 1

    @property
    def is_ovsdb(self) -> bool:
        return True

    def describe(self) -> str:  # pragma: no cover - every step overrides it
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.kind, "phase": self.phase, "describe": self.describe(),
                **asdict(self)}


@dataclass(frozen=True)
class AddBridge(Step):
    bridge: str
    datapath_type: str

    def describe(self) -> str:
        return f"add bridge {self.bridge} (datapath {self.datapath_type})"


@dataclass(frozen=True)
class SetBridgeDatapath(Step):
    bridge: str
    datapath_type: str
    was: str

    def describe(self) -> str:
        return f"set {self.bridge} datapath_type {self.was} -> {self.datapath_type}"


@dataclass(frozen=True)
class AddBond(Step):
    bridge: str
    bond: str
    members: tuple[str, ...]
    settings: BondSettings

    def describe(self) -> str:
        s = self.settings
        return (f"add bond {self.bond} on {self.bridge}: {' + '.join(self.members)}, "
                f"{s.mode}, lacp {s.lacp}")


@dataclass(frozen=True)
class SetBond(Step):
    bond: str
    settings: BondSettings
    changed: tuple[str, ...]  # e.g. ("mode: active-backup -> balance-slb",)

    def describe(self) -> str:
        return f"set bond {self.bond}: {'; '.join(self.changed)}"


@dataclass(frozen=True)
class AddBondMember(Step):
    bond: str
    member: str

    def describe(self) -> str:
        return f"add {self.member} to bond {self.bond}"


@dataclass(frozen=True)
class RemoveBondMember(Step):
    bond: str
    member: str

    @property
    def phase(self) -> int:
        return 2

    def describe(self) -> str:
        return f"remove {self.member} from bond {self.bond} (after a remaining member is up)"


@dataclass(frozen=True)
class CreateVirbr0(Step):
    address: str

    @property
    def is_ovsdb(self) -> bool:
        return False

    def describe(self) -> str:
        return f"create Linux bridge virbr0 with {self.address}"


@dataclass(frozen=True)
class AddVirbr0Address(Step):
    address: str

    @property
    def is_ovsdb(self) -> bool:
        return False

    def describe(self) -> str:
        return f"add {self.address} to virbr0"


# -- planning -------------------------------------------------------------------

def plan_host(spec: NetworkSpec, observed: ObservedHost, *, host: str = "host") -> list[Step]:
    """Steps that make ``observed`` match ``spec``; [] when it already does.

    Raises InvalidSpec for bond members the host does not have, or that already
    belong to another port.
    """
    steps: list[Step] = []
    for i, br in enumerate(spec.bridges):
        steps += _plan_bridge(br, observed, where=f"network.bridges[{i}]", host=host)
    if spec.virbr0.enabled and observed.virbr0 is not None:
        want = str(spec.virbr0.address)
        if not observed.virbr0.exists:
            steps.append(CreateVirbr0(want))
        elif want not in observed.virbr0.addresses:
            steps.append(AddVirbr0Address(want))
    return sorted(steps, key=lambda s: s.phase)


def _plan_bridge(br: BridgeSpec, observed: ObservedHost, *, where: str,
                 host: str) -> list[Step]:
    steps: list[Step] = []
    have = observed.bridge(br.name)
    if have is None:
        steps.append(AddBridge(br.name, br.datapath_type))
    elif (have.datapath_type or "system") != br.datapath_type:
        steps.append(SetBridgeDatapath(br.name, br.datapath_type, have.datapath_type or "system"))
    if br.uplink is None:
        return steps
    bond = br.bond_name
    assert bond is not None
    members = tuple(br.uplink.members)
    found = observed.port_anywhere(bond)
    current = found[1] if found else None
    current_members = set(current.interfaces) if current else set()
    for m in members:
        if m in current_members:
            continue
        if observed.nics is not None and m not in observed.nics:
            known = ", ".join(sorted(observed.nics)) or "none"
            raise InvalidSpec(f"{where}.uplink.members", m,
                              f"a NIC that exists on {host} (it has: {known})")
        other = observed.port_anywhere(m)
        owner = next((p.name for b in observed.bridges for p in b.ports
                      if m in p.interfaces and p.name != bond), None)
        if other is not None or owner is not None:
            raise InvalidSpec(f"{where}.uplink.members", m,
                              f"a NIC not already used by OVS port {owner or m} on {host}",
                              hint="remove it from that port first")
    settings = BondSettings.from_spec(br.uplink)
    if current is None:
        steps.append(AddBond(br.name, bond, members, settings))
        return steps
    observed_settings = BondSettings.from_port(current)
    changed = _settings_diff(observed_settings, settings)
    if changed:
        steps.append(SetBond(bond, settings, changed))
    steps += [AddBondMember(bond, m) for m in members if m not in current_members]
    steps += [RemoveBondMember(bond, m) for m in sorted(current_members - set(members))]
    return steps


def _settings_diff(have: BondSettings, want: BondSettings) -> tuple[str, ...]:
    out = []
    for name in ("mode", "lacp", "updelay_ms", "downdelay_ms"):
        a, b = getattr(have, name), getattr(want, name)
        if a != b:
            out.append(f"{name}: {a} -> {b}")
    if have.other_config != want.other_config:
        a_map, b_map = dict(have.other_config), dict(want.other_config)
        for key in BOND_OTHER_CONFIG_KEYS:
            if a_map.get(key) != b_map.get(key):
                out.append(f"{key}: {a_map.get(key, '-')} -> {b_map.get(key, '-')}")
    return tuple(out)


def phases(steps: list[Step]) -> tuple[list[Step], list[Step]]:
    """OVSDB steps split into (phase 1, phase 2); the second waits for the first."""
    ovs = [s for s in steps if s.is_ovsdb]
    return [s for s in ovs if s.phase == 1], [s for s in ovs if s.phase == 2]


def virbr0_steps(steps: list[Step]) -> list[Step]:
    return [s for s in steps if not s.is_ovsdb]


def cidr_addresses(addresses: list[tuple[str, int]]) -> tuple[str, ...]:
    """(address, prefixlen) pairs as sorted CIDR strings."""
    return tuple(sorted(str(ipaddress.IPv4Interface(f"{a}/{p}")) for a, p in addresses))
