"""Intent-named OVS operations; each is one OVSDB transaction with its result checked."""

from __future__ import annotations

import time
from typing import Any

from ovsdbapp.schema.open_vswitch import impl_idl

from ahvlite.errors import OperationFailed, OperationTimeout
from ahvlite.net import plan


def ensure_bridge_with_bond(api: impl_idl.OvsdbIdl, *, bridge: str, bond: str,
                            members: list[str], bond_mode: str = "active-backup",
                            datapath_type: str = "system") -> None:
    """Create ``bridge`` and its uplink bond in one transaction, if they are missing.

    Both bond members are created together with the port, so the bridge never has a
    half-made uplink. An existing bond is left untouched: `ahvlite net apply` plans and
    applies changes to it step by step, so the uplink is never lost on the way.
    """
    existing = api.db_find("Port", ("name", "=", bond), columns=["name"]).execute(
        check_error=True)
    try:
        with api.transaction(check_error=True) as txn:
            txn.add(api.add_br(bridge, may_exist=True, datapath_type=datapath_type))
            if existing:
                return
            ifaces = [txn.add(api.db_create("Interface", name=m, type="")) for m in members]
            # The same settings `ahvlite net apply` writes for a default BondSpec, so a
            # fresh host already matches the default network spec.
            port = txn.add(api.db_create(
                "Port", name=bond, interfaces=ifaces, bond_mode=bond_mode, lacp="off",
                other_config={"bond-detect-mode": "carrier", "lacp-fallback-ab": "false",
                              "lacp-time": "slow"}))
            txn.add(api.db_add("Bridge", bridge, "ports", port))
    except Exception as exc:
        raise OperationFailed(f"OVSDB refused bridge {bridge} with bond {bond}: {exc}") from None


def _optional(value: Any) -> Any:
    """OVSDB optional columns read as [] when empty and as the value when set."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


# -- observe: the host's OVS as plan.Observed* values -----------------------------

_PORT_COLUMNS = ["_uuid", "name", "interfaces", "bond_mode", "bond_active_slave", "lacp",
                 "bond_updelay", "bond_downdelay", "other_config", "tag", "trunks",
                 "vlan_mode"]
_IFACE_COLUMNS = ["_uuid", "name", "type", "link_state", "admin_state", "mac_in_use",
                  "lacp_current", "error", "external_ids"]


def observe_ovs(api: impl_idl.OvsdbIdl) -> tuple[tuple[plan.ObservedBridge, ...],
                                                  tuple[plan.ObservedInterface, ...]]:
    """Bridges, their ports and every interface, read from OVSDB columns."""
    bridges = api.db_list("Bridge", columns=["name", "datapath_type", "ports"]).execute(
        check_error=True)
    ports = api.db_list("Port", columns=_PORT_COLUMNS).execute(check_error=True)
    ifaces = api.db_list("Interface", columns=_IFACE_COLUMNS).execute(check_error=True)
    by_uuid = {r["_uuid"]: r for r in ifaces}
    observed_ifaces = {r["_uuid"]: plan.ObservedInterface(
        name=r["name"], type=r["type"], link_state=_optional(r["link_state"]),
        admin_state=_optional(r["admin_state"]), mac_in_use=_optional(r["mac_in_use"]),
        lacp_current=_optional(r["lacp_current"]), error=_optional(r["error"]),
        external_ids=dict(r["external_ids"])) for r in ifaces}
    port_views: dict[Any, plan.ObservedPort] = {}
    for p in ports:
        members = [by_uuid[u] for u in p["interfaces"] if u in by_uuid]
        active_mac = _optional(p["bond_active_slave"])
        # OVSDB records the active bond member by MAC address, not by name.
        active = next((m["name"] for m in members
                       if active_mac and _optional(m["mac_in_use"]) == active_mac), None)
        trunks = p["trunks"] if isinstance(p["trunks"], list) else [p["trunks"]]
        port_views[p["_uuid"]] = plan.ObservedPort(
            name=p["name"], interfaces=tuple(sorted(m["name"] for m in members)),
            bond_mode=_optional(p["bond_mode"]), lacp=_optional(p["lacp"]),
            bond_updelay_ms=int(p["bond_updelay"] or 0),
            bond_downdelay_ms=int(p["bond_downdelay"] or 0),
            other_config=dict(p["other_config"]), tag=_optional(p["tag"]),
            trunks=tuple(sorted(int(t) for t in trunks)), vlan_mode=_optional(p["vlan_mode"]),
            active_member=active)
    views = tuple(sorted((plan.ObservedBridge(
        name=b["name"], datapath_type=b["datapath_type"] or "system",
        ports=tuple(sorted((port_views[u] for u in b["ports"] if u in port_views),
                           key=lambda v: v.name)))
        for b in bridges), key=lambda b: b.name))
    return views, tuple(sorted(observed_ifaces.values(), key=lambda i: i.name))


def config_generation(api: impl_idl.OvsdbIdl) -> tuple[int, int]:
    """(next_cfg, cur_cfg): every committed change bumps next_cfg; vswitchd then cur_cfg."""
    row = api.db_list("Open_vSwitch", columns=["next_cfg", "cur_cfg"]).execute(
        check_error=True)[0]
    return int(row["next_cfg"]), int(row["cur_cfg"])


# -- apply: typed steps as one OVSDB transaction -------------------------------------

def apply_steps(api: impl_idl.OvsdbIdl, steps: list[plan.Step]) -> int:
    """Apply OVSDB ``steps`` in ONE transaction; return how many commands it held.

    Nothing is sent for an empty list, so an unchanged spec changes nothing (not even
    ``next_cfg``). The transaction waits until ovs-vswitchd has applied it.
    """
    ovs_steps = [s for s in steps if s.is_ovsdb]
    if not ovs_steps:
        return 0
    what = "; ".join(s.describe() for s in ovs_steps)
    try:
        with api.transaction(check_error=True) as txn:
            for step in ovs_steps:
                for command in step_commands(api, txn, step):
                    txn.add(command)
            count = len(txn.commands)
    except Exception as exc:  # ovsdbapp raises many unrelated exception types
        raise OperationFailed(f"OVSDB refused: {what}: {exc}") from None
    return count


def step_commands(api: impl_idl.OvsdbIdl, txn: Any, step: plan.Step) -> list[Any]:
    if isinstance(step, plan.AddBridge):
        return [api.add_br(step.bridge, may_exist=True, datapath_type=step.datapath_type)]
    if isinstance(step, plan.SetBridgeDatapath):
        return [api.db_set("Bridge", step.bridge, ("datapath_type", step.datapath_type),
                           if_exists=False)]
    if isinstance(step, plan.AddBond):
        s = step.settings
        ifaces = [txn.add(api.db_create("Interface", name=m, type="")) for m in step.members]
        port = txn.add(api.db_create(
            "Port", name=step.bond, interfaces=ifaces, bond_mode=s.mode, lacp=s.lacp,
            bond_updelay=s.updelay_ms, bond_downdelay=s.downdelay_ms,
            other_config=dict(s.other_config)))
        return [api.db_add("Bridge", step.bridge, "ports", port)]
    if isinstance(step, plan.SetBond):
        s = step.settings
        return [api.db_set("Port", step.bond, ("bond_mode", s.mode), ("lacp", s.lacp),
                           ("bond_updelay", s.updelay_ms), ("bond_downdelay", s.downdelay_ms),
                           ("other_config", dict(s.other_config)), if_exists=False)]
    if isinstance(step, plan.AddBondMember):
        iface = txn.add(api.db_create("Interface", name=step.member, type=""))
        return [api.db_add("Port", step.bond, "interfaces", iface)]
    if isinstance(step, plan.RemoveBondMember):
        row = api.lookup("Interface", step.member, default=None)
        if row is None:
            return []
        # The Interface row is not a root: removing the reference deletes it.
        return [api.db_remove("Port", step.bond, "interfaces", row.uuid, if_exists=True)]
    raise OperationFailed(f"not an OVSDB step: {step.describe()}")


def ensure_manager(api: impl_idl.OvsdbIdl, target: str) -> None:
    """Make ovsdb-server listen on ``target`` (e.g. ``pssl:6640:10.0.0.2``), if missing."""
    have = api.db_list("Manager", columns=["target"]).execute(check_error=True)
    if any(r["target"] == target for r in have):
        return
    try:
        api.add_manager(target).execute(check_error=True)
    except Exception as exc:
        raise OperationFailed(f"OVSDB refused manager {target}: {exc}") from None


def wait_member_up(api: impl_idl.OvsdbIdl, bond: str, *, keep: set[str],
                   timeout_s: float) -> str:
    """Wait until one of ``keep`` (members that stay in ``bond``) has carrier."""
    deadline = time.monotonic() + timeout_s
    while True:
        _, ifaces = observe_ovs(api)
        up = sorted(i.name for i in ifaces if i.name in keep and i.link_state == "up")
        if up:
            return up[0]
        if time.monotonic() > deadline:
            raise OperationTimeout(
                f"no remaining member of {bond} ({', '.join(sorted(keep))}) has carrier "
                f"after {timeout_s:.0f} s; old members were NOT removed",
                hint="check the new NICs' cabling / switch ports, then apply again")
        time.sleep(0.1)


def apply_plan(api: impl_idl.OvsdbIdl, steps: list[plan.Step], *,
               member_up_timeout_s: float = 30) -> dict[str, int]:
    """Run a host's OVSDB steps: phase 1 in one transaction, then removals in a second.

    Removing a bond member waits for phase 1 to take effect and for a member that
    stays in the bond to have carrier, so the host never loses its uplink.
    """
    first, second = plan.phases(steps)
    done = {"phase1_commands": apply_steps(api, first), "phase2_commands": 0}
    if second:
        bridges, _ = observe_ovs(api)
        leaving: dict[str, set[str]] = {}
        for step in second:
            assert isinstance(step, plan.RemoveBondMember)
            leaving.setdefault(step.bond, set()).add(step.member)
        for bond, members in leaving.items():
            port = next((p for b in bridges for p in b.ports if p.name == bond), None)
            keep = set(port.interfaces) - members if port else set()
            wait_member_up(api, bond, keep=keep, timeout_s=member_up_timeout_s)
        done["phase2_commands"] = apply_steps(api, second)
    return done


# -- ports the DHCP data plane reads and owns ---------------------------------------

def ofports(api: impl_idl.OvsdbIdl) -> dict[str, int]:
    """Interface name -> OpenFlow port number, for interfaces vswitchd has opened."""
    rows = api.db_list("Interface", columns=["name", "ofport"]).execute(check_error=True)
    out = {}
    for r in rows:
        port = _optional(r["ofport"])
        if isinstance(port, int) and port > 0:
            out[r["name"]] = port
    return out


def wait_ofport(api: impl_idl.OvsdbIdl, name: str, *, timeout_s: float = 10) -> int:
    """The OpenFlow port of interface ``name`` once vswitchd has opened it."""
    deadline = time.monotonic() + timeout_s
    while True:
        port = ofports(api).get(name)
        if port is not None:
            return port
        row = api.db_find("Interface", ("name", "=", name), columns=["error"]).execute(
            check_error=True)
        error = _optional(row[0]["error"]) if row else None
        if error or time.monotonic() > deadline:
            raise OperationTimeout(f"interface {name} has no OpenFlow port after "
                                   f"{timeout_s:.0f} s" + (f": {error}" if error else ""))
        time.sleep(0.05)


def ensure_access_port(api: impl_idl.OvsdbIdl, *, bridge: str, name: str, tag: int,
                         external_ids: dict[str, str]) -> None:
    """Port ``name`` on ``bridge`` as an access port of ``tag``, in one transaction.

    A responder's port is tagged with the dead VLAN (4095): NORMAL never forwards to
    it, only the flows that name its ofport do.
    """
    try:
        with api.transaction(check_error=True) as txn:
            txn.add(api.add_port(bridge, name, may_exist=True))
            txn.add(api.db_set("Port", name, ("tag", tag), ("trunks", []),
                               ("vlan_mode", []), if_exists=False))
            txn.add(api.db_set("Interface", name, ("external_ids", external_ids),
                               if_exists=False))
    except Exception as exc:
        raise OperationFailed(f"OVSDB refused port {name} on {bridge}: {exc}") from None


def remove_port(api: impl_idl.OvsdbIdl, *, bridge: str, name: str) -> None:
    """Remove port ``name`` from ``bridge``; a port that is gone is not an error."""
    try:
        api.del_port(name, bridge=bridge, if_exists=True).execute(check_error=True)
    except Exception as exc:
        raise OperationFailed(f"OVSDB refused to remove port {name}: {exc}") from None
