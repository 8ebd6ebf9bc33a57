"""One host's networking: observe (OVSDB + host links), plan, apply, show.

OVS is reached through the host's OVSDB (``ssl:ADDR:6640`` with mutual TLS, or a
unix socket). What only the host's kernel knows (its NIC names, virbr0) comes
through a ``HostShell``: a callable that runs an argv on the host and returns
(exit status, stdout). The CLI passes one built on SSH; net/ itself never imports
the SSH layer. ``ip -j`` gives JSON, so nothing here parses human text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ahvlite.errors import OperationFailed
from ahvlite.net import plan
from ahvlite.net.ovs import ops
from ahvlite.spec.network import NetworkSpec

HostShell = Callable[[list[str]], tuple[int, str]]
VIRBR0 = "virbr0"


@dataclass(frozen=True)
class ApplyResult:
    host: str
    steps: list[plan.Step]
    dry_run: bool
    ovsdb_commands: int
    next_cfg_before: int
    next_cfg_after: int

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "dry_run": self.dry_run,
                "steps": [s.to_dict() for s in self.steps],
                "ovsdb_commands": self.ovsdb_commands,
                "ovsdb_changes": self.next_cfg_after - self.next_cfg_before,
                "next_cfg": self.next_cfg_after}


def host_nics(shell: HostShell) -> frozenset[str]:
    """Every link name the host's kernel has (``ip -j link``)."""
    rc, out = shell(["ip", "-j", "link", "show"])
    if rc != 0:
        raise OperationFailed(f"cannot list the host's links (ip -j link exited {rc})")
    return frozenset(link["ifname"] for link in json.loads(out or "[]"))


def observe_virbr0(shell: HostShell) -> plan.ObservedVirbr0:
    rc, out = shell(["ip", "-j", "-4", "addr", "show", "dev", VIRBR0])
    if rc != 0:
        return plan.ObservedVirbr0(exists=False)
    links = json.loads(out or "[]")
    if not links:
        return plan.ObservedVirbr0(exists=False)
    link = links[0]
    addrs = plan.cidr_addresses([(a["local"], a["prefixlen"])
                                 for a in link.get("addr_info", []) if a.get("family") == "inet"])
    return plan.ObservedVirbr0(exists=True, addresses=addrs,
                               attached_to_ovs=link.get("master") not in (None, ""))


def observe(api: Any, shell: HostShell | None) -> plan.ObservedHost:
    bridges, ifaces = ops.observe_ovs(api)
    if shell is None:
        return plan.ObservedHost(bridges=bridges, interfaces=ifaces)
    return plan.ObservedHost(bridges=bridges, interfaces=ifaces, nics=host_nics(shell),
                             virbr0=observe_virbr0(shell))


def apply_virbr0(steps: list[plan.Step], shell: HostShell) -> None:
    """Create virbr0 / add its address with iproute2 on the host (idempotent steps)."""
    for step in plan.virbr0_steps(steps):
        argvs: list[list[str]] = []
        if isinstance(step, plan.CreateVirbr0):
            argvs = [["ip", "link", "add", VIRBR0, "type", "bridge", "stp_state", "0"],
                     ["ip", "addr", "add", step.address, "dev", VIRBR0],
                     ["ip", "link", "set", VIRBR0, "up"]]
        elif isinstance(step, plan.AddVirbr0Address):
            argvs = [["ip", "addr", "add", step.address, "dev", VIRBR0]]
        for argv in argvs:
            rc, out = shell(argv)
            if rc != 0:
                raise OperationFailed(f"{step.describe()}: `{' '.join(argv)}` exited {rc}: "
                                      f"{out.strip()}")


def apply_host(host: str, spec: NetworkSpec, api: Any, shell: HostShell | None, *,
               dry_run: bool) -> ApplyResult:
    """Plan ``spec`` against the host and, unless ``dry_run``, apply it."""
    before, _ = ops.config_generation(api)
    steps = plan.plan_host(spec, observe(api, shell), host=host)
    commands = 0
    if not dry_run and steps:
        done = ops.apply_plan(api, steps)
        commands = done["phase1_commands"] + done["phase2_commands"]
        if shell is not None:
            apply_virbr0(steps, shell)
    after, _ = ops.config_generation(api)
    return ApplyResult(host=host, steps=steps, dry_run=dry_run, ovsdb_commands=commands,
                       next_cfg_before=before, next_cfg_after=after)


def show_host(host: str, spec: NetworkSpec, api: Any, shell: HostShell | None) -> dict[str, Any]:
    """Bridges, bonds (mode, members with link state, active member, LACP) and VM ports."""
    observed = observe(api, shell)
    vlan_names = {(n.bridge, n.vlan): n.name for n in spec.networks}
    ifaces = {i.name: i for i in observed.interfaces}
    bridges = []
    for br in observed.bridges:
        bonds, vm_ports, other = [], [], []
        for p in br.ports:
            members = [ifaces[m] for m in p.interfaces if m in ifaces]
            if len(p.interfaces) > 1 or p.bond_mode:
                bonds.append({
                    "name": p.name, "mode": p.bond_mode or "active-backup",
                    "lacp": p.lacp or "off",
                    "lacp_fallback_ab": p.other_config.get("lacp-fallback-ab") == "true",
                    "lacp_time": p.other_config.get("lacp-time", "slow"),
                    "updelay_ms": p.bond_updelay_ms, "downdelay_ms": p.bond_downdelay_ms,
                    "active_member": p.active_member,
                    "members": [{"name": m.name, "link_state": m.link_state,
                                 "lacp_current": m.lacp_current, "error": m.error}
                                for m in members]})
                continue
            iface = members[0] if members else None
            ext = iface.external_ids if iface else {}
            if "attached-mac" in ext or "vm-id" in ext:
                vlans = [p.tag] if p.tag is not None and not p.trunks else list(p.trunks)
                vm_ports.append({
                    "port": p.name, "vm_uuid": ext.get("vm-id"), "mac": ext.get("attached-mac"),
                    "iface_id": ext.get("iface-id"),
                    "mode": "trunk" if p.trunks else "access", "tag": p.tag,
                    "vlan_mode": p.vlan_mode, "trunks": list(p.trunks),
                    "networks": [vlan_names.get((br.name, v), f"vlan{v}") for v in vlans],
                    "link_state": iface.link_state if iface else None})
            else:
                other.append({"port": p.name, "tag": p.tag,
                              "link_state": iface.link_state if iface else None})
        bridges.append({"name": br.name, "datapath_type": br.datapath_type, "bonds": bonds,
                        "vm_ports": vm_ports, "other_ports": other})
    virbr0 = None
    if observed.virbr0 is not None:
        virbr0 = {"exists": observed.virbr0.exists, "addresses": list(observed.virbr0.addresses),
                  "attached_to_ovs": observed.virbr0.attached_to_ovs}
    return {"host": host, "bridges": bridges, "virbr0": virbr0,
            "networks": [n.model_dump(mode="json", exclude_none=True) for n in spec.networks],
            "warnings": spec.warnings()}
