"""Network task kinds: VLAN networks in the cluster spec, a host's uplink bond, and
making hosts match the spec (one OVSDB transaction per host, from the leader).

The leader reaches each host's OVSDB with the certificate files the host's entry
names, which are the controller's own (``cluster.hostfiles``: by default the host's
libvirt client certificate under ``/etc/pki``). Spec changes are compare-and-set, so
two ``net create`` at once both land.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ahvlite.controller.kinds.base import HOST_FIELD, OPTIONAL_HOST, Params
from ahvlite.controller.kinds.spec import SpecKind
from ahvlite.controller.tasks import TaskContext
from ahvlite.errors import Conflict, InvalidSpec
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.errors import build
from ahvlite.spec.network import VlanNetworkSpec

BRIDGE = Field("br0", pattern=r"^[A-Za-z0-9_.-]{1,15}$", description="an OVS bridge")


class NetCreateParams(Params):
    name: str = Field(max_length=64)
    vlan: int
    bridge: str = BRIDGE
    ipam: dict[str, Any] | None = Field(
        None, description="an IpamSpec (subnet, gateway, pools, dns, domain, mtu, lease_s, "
                          "dhcp_server): a managed network; none: unmanaged")

    @model_validator(mode="after")
    def _network(self) -> NetCreateParams:
        build(VlanNetworkSpec, name=self.name, vlan=self.vlan, bridge=self.bridge,
              ipam=self.ipam)
        return self

    def network(self) -> VlanNetworkSpec:
        return build(VlanNetworkSpec, name=self.name, vlan=self.vlan, bridge=self.bridge,
                     ipam=self.ipam)


def _same_network(spec: ClusterSpec, p: NetCreateParams) -> bool:
    return spec.network.network(p.name) == p.network()


class NetCreate(SpecKind[NetCreateParams]):
    """``net.create``: a VLAN network added to the spec (hosts need no change: a VM
    NIC carries the tag). A resumed run that finds the network as asked is done."""

    name = "net.create"
    Params = NetCreateParams

    def check(self, p: NetCreateParams) -> None:
        from ahvlite.cluster.network import with_network

        spec = self.cluster()
        if spec.network.network(p.name) is not None:
            if not _same_network(spec, p):
                raise Conflict(f"network {p.name!r} already exists",
                               hint="`ahvlite net delete` it first, or pick another name")
            return
        with_network(spec, name=p.name, vlan=p.vlan, bridge=p.bridge, ipam=p.ipam)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster.network import with_network

        p = self.params(ctx)
        resumed = ctx.task.attempts > 1

        def add(spec: ClusterSpec) -> ClusterSpec | None:
            if resumed and _same_network(spec, p):
                return None
            return with_network(spec, name=p.name, vlan=p.vlan, bridge=p.bridge,
                                ipam=p.ipam)

        ctx.progress(30, f"recording network {p.name} (VLAN {p.vlan})")
        ctx.step("record", lambda: {"written": self.change_spec(ctx, add)[1]})
        return p.network().model_dump(mode="json", exclude_none=True)


class NetUpdateParams(Params):
    name: str = Field(max_length=64)
    changes: dict[str, Any] = Field(
        default_factory=dict, description="IpamSpec fields to set (pools, dns: the whole "
                                          "list); subnet and pools make a network managed")
    clear: list[str] = Field(default_factory=list, max_length=8,
                             description="IpamSpec fields back to their default")

    @model_validator(mode="after")
    def _some(self) -> NetUpdateParams:
        from ahvlite.spec.network import IpamSpec

        if not self.changes and not self.clear:
            raise InvalidSpec("changes", {}, "at least one setting to change or clear")
        unknown = sorted(set(self.changes) - set(IpamSpec.model_fields))
        if unknown:
            raise InvalidSpec("changes", unknown[0],
                              f"one of {', '.join(IpamSpec.model_fields)}")
        return self


class NetUpdate(SpecKind[NetUpdateParams]):
    """``net.update``: a network's IPAM settings changed by compare-and-set of the spec,
    after the allocations it holds were checked against the change (subnet, DHCP
    server and managed-or-not stay while addresses are allocated). Setting the same
    values again changes nothing, so a resumed run simply runs again."""

    name = "net.update"
    Params = NetUpdateParams

    def _plan(self, spec: ClusterSpec, p: NetUpdateParams) -> tuple[ClusterSpec, list[str]]:
        from ahvlite.cluster import ipam
        from ahvlite.cluster.network import with_ipam

        new = with_ipam(spec, name=p.name, changes=p.changes, clear=p.clear)
        old_net, new_net = spec.network.network(p.name), new.network.network(p.name)
        assert old_net is not None and new_net is not None
        return new, ipam.check_change(self.state().store, p.name, old_net.ipam,
                                      new_net.ipam)

    def check(self, p: NetUpdateParams) -> None:
        self._plan(self.cluster(), p)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        p = self.params(ctx)
        warnings: list[str] = []

        def change(spec: ClusterSpec) -> ClusterSpec | None:
            new, warned = self._plan(spec, p)
            warnings[:] = warned
            return None if new == spec else new

        ctx.progress(30, f"changing network {p.name}")
        ctx.step("record", lambda: {"written": self.change_spec(ctx, change)[1]})
        net = self.cluster().network.network(p.name)
        assert net is not None
        return {**net.model_dump(mode="json", exclude_none=True), "warnings": warnings}


class NetDeleteParams(Params):
    name: str = Field(max_length=64)


class NetDelete(SpecKind[NetDeleteParams]):
    """``net.delete``: a VLAN network removed from the spec (a resumed run that finds
    it gone is done)."""

    name = "net.delete"
    Params = NetDeleteParams

    def check(self, p: NetDeleteParams) -> None:
        _check_unused(self.state().store, p.name)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster.network import without_network

        p = self.params(ctx)
        resumed = ctx.task.attempts > 1

        def drop(spec: ClusterSpec) -> ClusterSpec | None:
            if resumed and spec.network.network(p.name) is None:
                return None
            _check_unused(self.state().store, p.name)
            return without_network(spec, name=p.name)

        ctx.progress(30, f"removing network {p.name}")
        ctx.step("record", lambda: {"written": self.change_spec(ctx, drop)[1]})
        return {"deleted": p.name}


class NetReleaseParams(Params):
    name: str = Field(max_length=64)
    ip: str = Field(max_length=15, description="the allocated address to free")
    force: bool = Field(False, description="also when a host did not answer (its VMs "
                                           "cannot be ruled out)")

    @model_validator(mode="after")
    def _ip(self) -> NetReleaseParams:
        from ipaddress import IPv4Address

        try:
            IPv4Address(self.ip)
        except ValueError:
            raise InvalidSpec("ip", self.ip, "an IPv4 address like 10.10.0.50") from None
        return self


class NetRelease(SpecKind[NetReleaseParams]):
    """``net.release``: free one address whose VM is gone (deleted behind the
    cluster's back: an orphan in ``net show``). Refused while a VM with that UUID
    exists, or (without ``force``) while a host does not answer. Freeing again finds
    nothing and is done."""

    name = "net.release"
    Params = NetReleaseParams

    def _holder(self, p: NetReleaseParams) -> Any:
        from ipaddress import IPv4Address

        from ahvlite.cluster import ipam, vms
        from ahvlite.errors import NotFound

        spec = self.cluster()
        net = spec.network.network(p.name)
        if net is None or net.ipam is None:
            raise NotFound(f"no managed network named {p.name!r}")
        held = next((a for a in ipam.allocations(self.state().store, p.name)
                     if IPv4Address(a.ip) == IPv4Address(p.ip)), None)
        if held is None:
            return None
        found, unreachable = vms.list_vms(spec)
        owner = next((v for v in found if v.uuid == held.vm_uuid), None)
        if owner is not None:
            raise Conflict(f"address {p.ip} on network {p.name} belongs to {owner.name} "
                           f"on {owner.host}", hint=f"`ahvlite vm nic remove {owner.name} "
                                                    f"{held.mac}` frees it")
        if unreachable and not p.force:
            raise Conflict(f"cannot rule out that {held.vm} runs on "
                           f"{', '.join(sorted(unreachable))} (no answer)",
                           hint="--force frees it anyway")
        return held

    def check(self, p: NetReleaseParams) -> None:
        from ahvlite.errors import NotFound

        if self._holder(p) is None:
            raise NotFound(f"network {p.name} has no allocation of {p.ip}")

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ipaddress import IPv4Address

        from ahvlite.cluster import ipam

        p = self.params(ctx)

        def release() -> dict[str, Any]:
            if self._holder(p) is None:
                return {"released": None}
            ctx.check_leader()
            freed = ipam.release_address(self.state().store, p.name, IPv4Address(p.ip),
                                         now=ctx.clock.time())
            return {"released": freed.to_dict() if freed else None}

        return dict(ctx.step("release", release))


def _check_unused(store: Any, name: str) -> None:
    """Conflict listing the VMs while the network has allocated addresses."""
    from ahvlite.cluster.ipam import check_deletable

    check_deletable(store, name)


class NetApplyParams(Params):
    host: str | None = OPTIONAL_HOST


class NetApply(SpecKind[NetApplyParams]):
    """``net.apply``: each host (or one) made to match the spec, one OVSDB transaction
    per host, one step per host. Applying is idempotent, so a resumed run applies the
    hosts not yet recorded and finds nothing left to do on one the old leader did."""

    name = "net.apply"
    Params = NetApplyParams

    def check(self, p: NetApplyParams) -> None:
        self.host("host", p.host)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import network as cnet

        p = self.params(ctx)
        spec = self.cluster()
        names = [p.host] if p.host else [h.name for h in spec.hosts]
        results = []
        for i, name in enumerate(names):
            ctx.progress(int(100 * i / max(1, len(names))),
                         f"applying host networking on {name} ({i + 1}/{len(names)})")
            results.append(ctx.step(f"apply-{name}", lambda n=name: cnet.apply(  # type: ignore[misc]
                spec, [n])[0].to_dict()))
        return {"results": results, "warnings": spec.network.warnings()}


class BondSetParams(Params):
    host: str = HOST_FIELD
    bridge: str = BRIDGE
    mode: str | None = Field(None, max_length=32)
    members: list[str] | None = Field(None, max_length=16)
    lacp: str | None = Field(None, max_length=16)

    def bond(self) -> dict[str, Any]:
        return {"bridge": self.bridge, "mode": self.mode, "members": self.members,
                "lacp": self.lacp}


class NetBondSet(SpecKind[BondSetParams]):
    """``net.bond.set``: plan the bond change against the host (unknown NICs are
    refused before anything is recorded), record it in the host's entry by
    compare-and-set, then apply it (new members join before old ones leave). Each step
    is idempotent: re-recording finds the override there, re-applying finds the host
    as planned."""

    name = "net.bond.set"
    Params = BondSetParams

    def check(self, p: BondSetParams) -> None:
        from ahvlite.cluster.network import bond_override

        self.host("host", p.host)
        bond_override(self.cluster(), p.host, **p.bond())  # mode, LACP, bridge: refused now

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import network as cnet
        from ahvlite.cluster.specwrite import read_spec

        p = self.params(ctx)
        spec = self.cluster()
        ctx.progress(10, f"planning the bond on {p.host}")
        ctx.step("plan", lambda: cnet.plan_bond(spec, p.host, **p.bond())[1].to_dict())
        ctx.progress(40, f"recording the bond of {p.host}")
        ctx.step("record", lambda: {"written": self.change_spec(
            ctx, lambda s: cnet.bond_override(s, p.host, **p.bond()))[1]})
        new, _ = read_spec(self.state())
        assert new is not None
        ctx.progress(60, f"changing the bond on {p.host}")
        done = ctx.step("apply", lambda: cnet.apply(new, [p.host])[0].to_dict())
        return {"result": done,
                "warnings": cnet.host_network(new, new.host(p.host)).warnings()}


KINDS = (NetCreate, NetUpdate, NetDelete, NetRelease, NetApply, NetBondSet)
