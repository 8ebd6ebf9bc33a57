"""Reads about the cluster itself: its spec, its hosts (state and facts), host networking
and the CPU level. Hosts are reached from the controller serving the read, with the
files the host entries name (the controller's own, see ``cluster.hostfiles``)."""

from __future__ import annotations

from dataclasses import asdict
from ipaddress import IPv4Address
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ahvlite.controller.api.reads import NoQuery, Read, ReadContext

HOST_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


def cluster_spec(ctx: ReadContext, _q: NoQuery) -> dict[str, Any]:
    return ctx.spec().model_dump(mode="json", exclude_none=True)


def cluster_documents(ctx: ReadContext, _q: NoQuery) -> dict[str, Any]:
    """Which of the cluster's documents the store holds (keys only: what `cluster apply
    --dry-run` would not import)."""
    from ahvlite.cluster.specwrite import document_keys

    return {"keys": sorted(document_keys(ctx.coord))}


def host_list(ctx: ReadContext, _q: NoQuery) -> dict[str, Any]:
    from ahvlite.cluster import inventory

    spec = ctx.spec()
    return {"cluster": spec.name, "hosts": [asdict(s) for s in inventory.statuses(spec)]}


def host_show(ctx: ReadContext, _q: NoQuery, *, name: str) -> dict[str, Any]:
    from ahvlite.cluster import inventory

    h = ctx.spec().host(name)
    st = inventory.host_status(h)
    return {**h.model_dump(mode="json"),
            **{k: v for k, v in asdict(st).items() if k not in ("name", "uri")}}


def host_facts(ctx: ReadContext, _q: NoQuery, *, name: str) -> dict[str, Any]:
    from ahvlite.cluster import inventory

    return inventory.host_facts(ctx.spec().host(name)).model_dump(mode="json")


class FactsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    serial: bool = Field(False, description="one host after another (default: in parallel)")


def all_facts(ctx: ReadContext, q: FactsQuery) -> list[dict[str, Any]]:
    from ahvlite.cluster import inventory

    return [f.model_dump(mode="json")
            for f in inventory.all_facts(ctx.spec(), in_parallel=not q.serial)]


class HostQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str | None = Field(None, pattern=HOST_NAME, description="only this host")


def networks(ctx: ReadContext, q: HostQuery) -> list[dict[str, Any]]:
    from ahvlite.cluster import network as cnet

    return cnet.show(ctx.spec(), [q.host] if q.host else None)


def network_plan(ctx: ReadContext, q: HostQuery) -> dict[str, Any]:
    """What `net apply` would do on each host (planned against it, nothing changed)."""
    from ahvlite.cluster import network as cnet

    spec = ctx.spec()
    results = cnet.apply(spec, [q.host] if q.host else None, dry_run=True)
    return {"results": [r.to_dict() for r in results], "warnings": spec.network.warnings()}


def network_ipam(ctx: ReadContext, _q: NoQuery, *, name: str) -> dict[str, Any]:
    """One VLAN network: its settings, pool use and allocations with the host each VM
    runs on (an allocation whose VM no host has is marked orphan, but only when every
    host answered: an unreachable host's VMs keep their addresses)."""
    from ahvlite.cluster import ipam, vms
    from ahvlite.errors import NotFound

    spec = ctx.spec()
    net = spec.network.network(name)
    if net is None:
        known = ", ".join(n.name for n in spec.network.networks) or "none"
        raise NotFound(f"no network named {name!r} (networks: {known})")
    out: dict[str, Any] = {**net.model_dump(mode="json", exclude_none=True),
                           "managed": net.ipam is not None}
    if net.ipam is None:
        return out
    held = ipam.allocations(ctx.coord, name)
    found, unreachable = vms.list_vms(spec) if held else ([], {})
    host_of = {v.uuid: v.host for v in found}
    ips = [IPv4Address(a.ip) for a in held]
    out["dhcp_server"] = str(net.ipam.server)
    out["pools"] = [{"range": str(p), "size": p.size, "used": sum(1 for ip in ips if ip in p)}
                    for p in net.ipam.pools]
    out["allocations"] = [{**a.to_dict(), "host": host_of.get(a.vm_uuid),
                           "orphan": not unreachable and a.vm_uuid not in host_of}
                          for a in held]
    out["unreachable"] = unreachable
    return out


class BondQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(pattern=HOST_NAME, description="the host")
    bridge: str = Field("br0", pattern=r"^[A-Za-z0-9_.-]{1,15}$")
    mode: str | None = Field(None, max_length=32)
    members: str | None = Field(None, max_length=512, description="NICs, comma-separated")
    lacp: str | None = Field(None, max_length=16)


def bond_plan(ctx: ReadContext, q: BondQuery) -> dict[str, Any]:
    """What `net bond set` would do on the host (nothing is recorded or changed)."""
    from ahvlite.cluster import network as cnet

    members = [m.strip() for m in q.members.split(",") if m.strip()] if q.members else None
    new, planned = cnet.plan_bond(ctx.spec(), q.host, bridge=q.bridge, mode=q.mode,
                                  members=members, lacp=q.lacp)
    return {"result": planned.to_dict(),
            "warnings": cnet.host_network(new, new.host(q.host)).warnings()}


def cpu(ctx: ReadContext, _q: NoQuery) -> dict[str, Any]:
    from ahvlite.cluster import cpulevel, cpustore

    spec = ctx.spec()
    return {"cluster": spec.name, **cpulevel.show(spec, cpustore.store_for(spec))}


def storage(ctx: ReadContext, _q: NoQuery) -> dict[str, Any]:
    from ahvlite.cluster import storageview

    return storageview.storage_view(ctx.spec())


READS: tuple[Read, ...] = (
    Read("/v1/storage", storage, "storage: iscsi: every host's targets and their health as "
         "its redirector sees them, and the target each VM disk's session is on"),
    Read("/v1/cluster", cluster_spec, "the cluster spec (hosts, networks, pools, labels)"),
    Read("/v1/cluster/documents", cluster_documents,
         "the keys of the cluster's state documents and templates the store holds"),
    Read("/v1/hosts", host_list, "every host with its connection state (checked now)"),
    Read("/v1/hosts/{name}", host_show, "one host: its entry and connection state"),
    Read("/v1/hosts/{name}/facts", host_facts,
         "libvirt facts of one host (and SSH facts where the controller reaches it)"),
    Read("/v1/facts", all_facts, "the facts of every host", FactsQuery),
    Read("/v1/networks", networks,
         "bridges, bonds and their members, VM ports, virbr0, per host", HostQuery),
    Read("/v1/networks/plan", network_plan, "what `net apply` would change", HostQuery),
    Read("/v1/networks/bond-plan", bond_plan, "what `net bond set` would change", BondQuery),
    Read("/v1/networks/{name}/ipam", network_ipam,
         "one VLAN network: its IPAM settings, pool use, and every allocation (VM, MAC, "
         "address, host)"),
    Read("/v1/cpu", cpu, "each host's CPU, their baseline, the stored cluster CPU level"),
)
