"""Host networking across the cluster: the cluster spec's network, applied per host.

Each host is reached through its OVSDB remote (``ovsdb`` in the host's entry: the
certificate paths are the controller's own files, see ``cluster.hostfiles``) and, for
what only its kernel knows (NIC names, virbr0), through SSH. The leader's ``net.*``
task kinds record a change in the stored spec first (compare-and-set), then apply it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ahvlite.cluster.inventory import parallel, save_cluster, ssh_target
from ahvlite.errors import Conflict, InvalidSpec, NotFound
from ahvlite.net import hostnet
from ahvlite.net.ovs.api import OvsdbPki, ovsdb
from ahvlite.remote import ssh
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.spec.errors import build
from ahvlite.spec.network import (
    BondSpec,
    BridgeSpec,
    HostNetworkSpec,
    NetworkSpec,
    VlanNetworkSpec,
)


def host_network(cluster: ClusterSpec, host: HostSpec) -> NetworkSpec:
    return cluster.network.for_host(host.network)


def _shell(host: HostSpec) -> hostnet.HostShell | None:
    target = ssh_target(host)
    if target is None:
        return None

    def run(argv: list[str]) -> tuple[int, str]:
        result = ssh.run(target, argv, check=False, timeout_s=30)
        return result.exit_status, result.stdout + result.stderr
    return run


@contextmanager
def host_ovsdb(host: HostSpec) -> Iterator[Any]:
    if host.ovsdb is None:
        raise NotFound(f"host {host.name} has no ovsdb remote in the cluster",
                       hint="add ovsdb: {remote: ssl:ADDR:6640, ca_cert, certificate, "
                            "private_key} to the host and `ahvlite cluster apply` it")
    o = host.ovsdb
    pki = None
    if o.ca_cert and o.certificate and o.private_key:
        pki = OvsdbPki(ca_cert=o.ca_cert, certificate=o.certificate, private_key=o.private_key)
    with ovsdb(o.remote, pki=pki) as api:
        yield api


def _hosts(cluster: ClusterSpec, names: list[str] | None) -> list[HostSpec]:
    return [cluster.host(n) for n in names] if names else list(cluster.hosts)


def show(cluster: ClusterSpec, names: list[str] | None = None) -> list[dict[str, Any]]:
    def one(host: HostSpec) -> dict[str, Any]:
        with host_ovsdb(host) as api:
            return hostnet.show_host(host.name, host_network(cluster, host), api, _shell(host))
    return parallel(one, _hosts(cluster, names))


def apply(cluster: ClusterSpec, names: list[str] | None = None, *,
          dry_run: bool = False) -> list[hostnet.ApplyResult]:
    def one(host: HostSpec) -> hostnet.ApplyResult:
        with host_ovsdb(host) as api:
            return hostnet.apply_host(host.name, host_network(cluster, host), api,
                                      _shell(host), dry_run=dry_run)
    return parallel(one, _hosts(cluster, names))


def _rebuilt(cluster: ClusterSpec, **changes: Any) -> ClusterSpec:
    # Re-validate the whole file so cross-field rules (unique VLANs ...) hold.
    return build(ClusterSpec, **{**cluster.model_dump(mode="json", exclude_none=True),
                                 **changes})


def with_network(cluster: ClusterSpec, *, name: str, vlan: int,
                 bridge: str = "br0", ipam: dict[str, Any] | None = None) -> ClusterSpec:
    """The cluster with VLAN network ``name`` added (not stored); managed with
    ``ipam`` (an IpamSpec's fields)."""
    if cluster.network.network(name) is not None:
        raise Conflict(f"network {name!r} already exists",
                       hint="`ahvlite net delete` it first, or pick another name")
    net = build(VlanNetworkSpec, name=name, vlan=vlan, bridge=bridge, ipam=ipam)
    network = cluster.network.model_dump(mode="json", exclude_none=True)
    network["networks"].append(net.model_dump(mode="json", exclude_none=True))
    return _rebuilt(cluster, network=network)


IPAM_CLEARABLE = ("gateway", "dhcp_server", "dns", "domain", "mtu")


def with_ipam(cluster: ClusterSpec, *, name: str, changes: dict[str, Any],
              clear: list[str] | None = None) -> ClusterSpec:
    """The cluster with network ``name``'s IPAM settings changed (not stored): each
    field in ``changes`` replaces the old value (``pools``, ``dns``: the whole list),
    each field in ``clear`` goes back to its default. An unmanaged network becomes
    managed when ``changes`` name a subnet and pools. Whether live allocations allow
    the change is ``cluster.ipam.check_change``'s to say."""
    net = cluster.network.network(name)
    if net is None:
        known = ", ".join(n.name for n in cluster.network.networks) or "none"
        raise NotFound(f"no network named {name!r} (networks: {known})")
    for field in clear or []:
        if field not in IPAM_CLEARABLE:
            raise InvalidSpec("clear", field, f"one of {', '.join(IPAM_CLEARABLE)}")
    doc = net.ipam.model_dump(mode="json", exclude_none=True) if net.ipam else {}
    doc.update({k: v for k, v in changes.items() if v is not None})
    for field in clear or []:
        doc.pop(field, None)
    if not doc:
        raise InvalidSpec("subnet", None, f"a subnet and pools: network {name} is not "
                          "managed yet", hint="--subnet CIDR --pool A-B makes it managed")
    new_net = build(VlanNetworkSpec, **{**net.model_dump(mode="json", exclude_none=True),
                                         "ipam": doc})
    network = cluster.network.model_dump(mode="json", exclude_none=True)
    network["networks"] = [new_net.model_dump(mode="json", exclude_none=True)
                           if n["name"] == name else n for n in network["networks"]]
    return _rebuilt(cluster, network=network)


def without_network(cluster: ClusterSpec, *, name: str) -> ClusterSpec:
    """The cluster without VLAN network ``name`` (NotFound if it has none; not stored)."""
    if cluster.network.network(name) is None:
        known = ", ".join(n.name for n in cluster.network.networks) or "none"
        raise NotFound(f"no network named {name!r} (networks: {known})")
    network = cluster.network.model_dump(mode="json", exclude_none=True)
    network["networks"] = [n for n in network["networks"] if n["name"] != name]
    return _rebuilt(cluster, network=network)


def create_network(path: Path, cluster: ClusterSpec, *, name: str, vlan: int,
                   bridge: str = "br0") -> ClusterSpec:
    """:func:`with_network` written to a cluster FILE (the lab's, until it applies
    through the API)."""
    new = with_network(cluster, name=name, vlan=vlan, bridge=bridge)
    save_cluster(path, new)
    return new


def plan_bond(cluster: ClusterSpec, host_name: str, **bond: Any
              ) -> tuple[ClusterSpec, hostnet.ApplyResult]:
    """The cluster with ``host_name``'s bond changed (:func:`bond_override`) and the
    steps it takes on the host, planned against the host itself (unknown NICs fail
    here), so the spec only ever records a bond the host can have. Changes nothing."""
    new = bond_override(cluster, host_name, **bond)
    (planned,) = apply(new, [host_name], dry_run=True)
    return new, planned


def bond_override(cluster: ClusterSpec, host_name: str, *, bridge: str = "br0",
                  mode: str | None = None, members: list[str] | None = None,
                  lacp: str | None = None, lacp_fallback_ab: bool | None = None) -> ClusterSpec:
    """The cluster spec with a host override for ``bridge``'s uplink bond (not saved)."""
    host = cluster.host(host_name)
    effective = host_network(cluster, host)
    bridges = [b.model_dump(mode="json") for b in effective.bridges]
    target = next((b for b in bridges if b["name"] == bridge), None)
    if target is None or target.get("uplink") is None:
        have = ", ".join(b["name"] for b in bridges)
        raise InvalidSpec("bridge", bridge, f"a bridge with an uplink bond on {host_name} "
                                            f"(bridges: {have})")
    bond = dict(target["uplink"])
    for key, value in (("mode", mode), ("members", members), ("lacp", lacp),
                       ("lacp_fallback_ab", lacp_fallback_ab)):
        if value is not None:
            bond[key] = value
    target["uplink"] = build(BondSpec, **bond).model_dump(mode="json")
    build(BridgeSpec, **target)
    override = (host.network or HostNetworkSpec()).model_dump(mode="json")
    override["bridges"] = bridges
    hosts = [h.model_dump(mode="json", exclude_none=True) for h in cluster.hosts]
    for h in hosts:
        if h["name"] == host_name:
            h["network"] = {k: v for k, v in override.items() if v is not None}
    new = _rebuilt(cluster, hosts=hosts)
    host_network(new, new.host(host_name))  # the merged spec must validate too
    return new
