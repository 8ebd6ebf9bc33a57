"""Intent-named OVS operations; each is one OVSDB transaction with its result checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ovsdbapp.schema.open_vswitch import impl_idl

from ahvlite.errors import OperationFailed


@dataclass(frozen=True)
class PortView:
    name: str
    interfaces: tuple[str, ...]
    bond_mode: str | None
    bond_active_member: str | None
    tag: int | None


def ensure_bridge_with_bond(api: impl_idl.OvsdbIdl, *, bridge: str, bond: str,
                            members: list[str], bond_mode: str = "active-backup",
                            datapath_type: str = "system") -> None:
    """Create ``bridge`` and its uplink bond in one transaction, if they are missing.

    Both bond members are created together with the port, so the bridge never has a
    half-made uplink. An existing bond is left untouched (issue 4 reconciles it).
    """
    existing = api.db_find("Port", ("name", "=", bond), columns=["name"]).execute(
        check_error=True)
    try:
        with api.transaction(check_error=True) as txn:
            txn.add(api.add_br(bridge, may_exist=True, datapath_type=datapath_type))
            if existing:
                return
            ifaces = [txn.add(api.db_create("Interface", name=m, type="")) for m in members]
            port = txn.add(api.db_create(
                "Port", name=bond, interfaces=ifaces, bond_mode=bond_mode,
                other_config={"bond-detect-mode": "carrier"}))
            txn.add(api.db_add("Bridge", bridge, "ports", port))
    except Exception as exc:
        raise OperationFailed(f"OVSDB refused bridge {bridge} with bond {bond}: {exc}") from None


def bridge_ports(api: impl_idl.OvsdbIdl, bridge: str) -> list[PortView]:
    """The ports of ``bridge`` as read from OVSDB columns (not ovs-appctl text)."""
    rows = api.db_list("Bridge", [bridge], columns=["ports"], if_exists=True).execute(
        check_error=True)
    if not rows:
        return []
    wanted = set(rows[0]["ports"])
    ports = api.db_list("Port", columns=["_uuid", "name", "interfaces", "bond_mode",
                                         "bond_active_slave", "tag"]).execute(check_error=True)
    ifaces = {r["_uuid"]: r for r in api.db_list(
        "Interface", columns=["_uuid", "name", "mac_in_use"]).execute(check_error=True)}
    views = []
    for port in ports:
        if port["_uuid"] not in wanted:
            continue
        members = [ifaces[u] for u in port["interfaces"] if u in ifaces]
        # OVSDB records the active bond member by MAC address, not by name.
        active_mac = _optional(port["bond_active_slave"])
        active = next((m["name"] for m in members if active_mac
                       and m["mac_in_use"] == active_mac), None)
        views.append(PortView(
            name=port["name"], interfaces=tuple(sorted(m["name"] for m in members)),
            bond_mode=_optional(port["bond_mode"]),
            bond_active_member=active,
            tag=_optional(port["tag"])))
    return sorted(views, key=lambda v: v.name)


def _optional(value: Any) -> Any:
    """OVSDB optional columns read as [] when empty and as the value when set."""
    if isinstance(value, list):
        return value[0] if value else None
    return value
