"""IPAM decisions without I/O: whether a requested address may be reserved on a managed
network, which free addresses a batch of NICs gets, and which NICs of a VM need an
address at all. ``cluster.ipam`` reads and writes the store around these."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from ahvlite.errors import Conflict, InvalidSpec
from ahvlite.spec.network import IpamSpec, NetworkSpec
from ahvlite.spec.vm import NicSpec


@dataclass(frozen=True)
class NicWant:
    """One NIC that needs an address: on ``network`` (managed), with its MAC, of the
    VM ``vm`` (``vm_uuid`` tells a resumed task's own allocation from another VM's);
    ``ip`` a reserved address, or None for one from the pools."""

    network: str
    mac: str
    vm: str
    vm_uuid: str
    ip: IPv4Address | None = None


def check_request(network: str, ipam: IpamSpec, ip: IPv4Address) -> None:
    """InvalidSpec naming the network and the address when ``ip`` can never be a NIC's
    on it: outside the subnet, its network or broadcast address, the gateway, the DHCP
    server. An address outside the pools but inside the subnet may be reserved."""
    net = ipam.subnet
    field = f"nic.ip (network {network})"
    if ip not in net:
        raise InvalidSpec(field, str(ip), f"an address inside {net}, the subnet of "
                          f"network {network}")
    if ip in (net.network_address, net.broadcast_address):
        raise InvalidSpec(field, str(ip), f"a host address of {net} (not its network or "
                          "broadcast address)")
    if ip == ipam.gateway:
        raise InvalidSpec(field, str(ip), f"an address other than the gateway of network "
                          f"{network}")
    if ip == ipam.server:
        raise InvalidSpec(field, str(ip), f"an address other than the DHCP server of "
                          f"network {network}")


def choose(network: str, ipam: IpamSpec, taken: set[IPv4Address], n: int, *,
           skip: int = 0) -> list[IPv4Address]:
    """``n`` free addresses in pool order (all or none): Conflict naming the network,
    its pools and their use when fewer are free. ``skip`` passes over up to that many
    free ones first (as many as the pools can spare): writers that lost a race choose
    apart instead of all taking the lowest free address again."""
    out: list[IPv4Address] = []
    if n <= 0:
        return out
    want = n + max(0, skip)
    for pool in ipam.pools:
        ip = pool.start
        while ip <= pool.end and len(out) < want:
            if ip not in taken and ip != ipam.gateway and ip != ipam.server:
                out.append(ip)
            ip += 1
    if len(out) >= n:
        start = min(max(0, skip), len(out) - n)
        return out[start:start + n]
    used = sum(1 for ip in taken if ipam.in_pools(ip))
    pools = ", ".join(str(p) for p in ipam.pools)
    raise Conflict(f"network {network} has no free address for {n} NIC(s): pools {pools}, "
                   f"{used} of {ipam.size} in use, {len(out)} free",
                   hint=f"`ahvlite net update {network} --pool A-B` adds a pool")


def wants_of(network: NetworkSpec, vm: str, vm_uuid: str, nics: list[NicSpec]
             ) -> list[NicWant]:
    """The NICs of a VM that need an address (those on managed networks; each must
    carry its MAC). ``ip=`` on an unmanaged network, or a trunk NIC that carries a
    managed network's VLAN tagged (IPAM covers a NIC's native VLAN only), is an
    InvalidSpec."""
    managed_vlans = {(n.bridge, n.vlan): n.name for n in network.networks
                     if n.ipam is not None}
    out = []
    for nic in nics:
        net = network.network(nic.network)
        if (net is None or net.ipam is None) and nic.ip is not None:
            raise InvalidSpec("nic.ip", str(nic.ip), f"unset: network {nic.network} is "
                              "not managed (it has no subnet)",
                              hint="only managed networks (created with --subnet) "
                                   "allocate addresses")
        bridge = net.bridge if net is not None else nic.network
        for v in nic.trunk_vlans:
            other = managed_vlans.get((bridge, v))
            if other is not None and (net is None or v != net.vlan):
                raise InvalidSpec("nic.trunk_vlans", v, f"VLANs of unmanaged networks only "
                                  f"(VLAN {v} is managed network {other}, which a NIC gets "
                                  "as its own network)")
        if net is None or net.ipam is None:
            continue
        if nic.mac is None:
            raise InvalidSpec("nic.mac", None, "a MAC (chosen before addresses are)")
        if nic.ip is not None:
            check_request(net.name, net.ipam, nic.ip)
        out.append(NicWant(net.name, nic.mac.lower(), vm, vm_uuid, nic.ip))
    return out
