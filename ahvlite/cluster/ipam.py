"""IPAM state in the store: one key per allocated address and one per NIC MAC, per
managed network, and one generation key every change bumps.

    ipam/net/NET/addr/IP   {"mac", "vm", "vm_uuid", "by", "at"}   created must-not-exist
    ipam/net/NET/mac/MAC   {"ip", "vm", "vm_uuid"}                created must-not-exist
    ipam/gen               {"at"}  written in every allocate/release transaction

Uniqueness is the store's: a batch (every NIC of a VM, or of a whole deploy) is ONE
transaction creating its address and MAC keys, so two leaders or two worker threads can
never both hold an address, and a failed batch leaves nothing. Readers (``net show``,
``vm list``, each host's DHCP responder) read ``ipam/net/NET/mac/*`` and watch
``ipam/gen`` alone to learn of a change.

Everything read is checked: a key or document that is not an address, a MAC or a JSON
object of the right shape is skipped (and, for an address key, still counted as taken).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from ipaddress import AddressValueError, IPv4Address
from typing import Any

from ahvlite.cluster.ipamplan import NicWant, check_request, choose, wants_of
from ahvlite.errors import Conflict, InvalidSpec, NotFound
from ahvlite.kv import MUST_NOT_EXIST, Delete, DocStore, Op, Put, VersionMismatch
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.network import NET_NAME, IpamSpec, NetworkSpec
from ahvlite.spec.vm import MAC_RE, VmSpec

ROOT = "ipam/net"
GEN_KEY = "ipam/gen"
NET_RE = re.compile(NET_NAME)
TRIES = 20  # a chosen address taken meanwhile: read again and choose again


def net_key(network: str) -> str:
    return f"{ROOT}/{network}"


def addr_key(network: str, ip: IPv4Address | str) -> str:
    return f"{ROOT}/{network}/addr/{ip}"


def mac_key(network: str, mac: str) -> str:
    return f"{ROOT}/{network}/mac/{mac.lower()}"


@dataclass(frozen=True)
class Allocation:
    network: str
    ip: str
    mac: str
    vm: str
    vm_uuid: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _doc(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _ip(text: object) -> IPv4Address | None:
    try:
        return IPv4Address(text) if isinstance(text, str) else None
    except (AddressValueError, ValueError):
        return None


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _gen(now: float) -> Put:
    return Put(GEN_KEY, _encode({"at": now}))


def taken(store: DocStore, network: str) -> set[IPv4Address]:
    """Every address of ``network`` that has a key (names only: no values read)."""
    return {ip for n in store.names(f"{net_key(network)}/addr") if (ip := _ip(n))}


def _holder(store: DocStore, network: str, ip: IPv4Address) -> str:
    got = store.get(addr_key(network, ip))
    doc = _doc(got.value) if got else None
    if not doc:
        return "another NIC"
    return f"{doc.get('vm')!s} ({doc.get('mac')!s})"


def allocate(store: DocStore, network: NetworkSpec, wants: list[NicWant], *, by: str,
             now: float) -> dict[str, str]:
    """An address for each NIC of ``wants`` ({MAC: address}), all in one transaction.

    A MAC that already holds an address for the same VM (a resumed task) keeps it; one
    held for another VM is a Conflict. A reserved address taken by another NIC is a
    Conflict naming network, address and holder; a full pool a Conflict naming the
    pools. Nothing is written unless every NIC gets its address."""
    if not wants:
        return {}
    for w in wants:
        net = network.network(w.network)
        if net is None or net.ipam is None:
            raise InvalidSpec("nic.network", w.network, "a managed network (with a subnet)")
        if w.ip is not None:
            check_request(net.name, net.ipam, w.ip)
    macs: dict[tuple[str, str], str] = {}
    for w in wants:
        if (w.network, w.mac) in macs:
            raise InvalidSpec("nic.mac", w.mac, f"each MAC once on network {w.network} "
                              f"({macs[w.network, w.mac]} has it too)")
        macs[w.network, w.mac] = w.vm
    seen: dict[tuple[str, IPv4Address], str] = {}
    for w in wants:
        if w.ip is not None:
            if (w.network, w.ip) in seen:
                raise InvalidSpec("nic.ip", str(w.ip), f"each address once on network "
                                  f"{w.network} (asked for {seen[w.network, w.ip]} too)")
            seen[w.network, w.ip] = w.vm
    rnd = random.Random()
    for attempt in range(TRIES):
        # After a lost race, choose from a random offset among the free addresses: two
        # writers taking the lowest free one again and again would starve one of them.
        skip = rnd.randrange(4 * attempt * len(wants) + 1)
        got, ops = _plan(store, network, wants, by=by, now=now, skip=skip)
        if not ops:
            return got
        try:
            store.transaction([*ops, _gen(now)])
            return got
        except VersionMismatch:
            continue  # someone allocated meanwhile: read again (a reservation may now fail)
    raise Conflict(f"IPAM of network {wants[0].network}: addresses taken by others "
                   f"{TRIES} times in a row", hint="try again")


def _plan(store: DocStore, network: NetworkSpec, wants: list[NicWant], *, by: str,
          now: float, skip: int = 0) -> tuple[dict[str, str], list[Op]]:
    """The addresses ``wants`` get as the store holds now, and the writes for the new
    ones."""
    out: dict[str, str] = {}
    new: list[NicWant] = []
    for w in wants:
        got = store.get(mac_key(w.network, w.mac))
        if got is None:
            new.append(w)
            continue
        doc = _doc(got.value) or {}
        ip = _ip(doc.get("ip"))
        if doc.get("vm_uuid") != w.vm_uuid or ip is None:
            raise Conflict(f"MAC {w.mac} on network {w.network} belongs to "
                           f"{doc.get('vm')!s}", hint="give the NIC another MAC")
        if w.ip is not None and w.ip != ip:
            raise Conflict(f"MAC {w.mac} of {w.vm} holds {ip} on network {w.network}, "
                           f"not {w.ip}", hint="remove the NIC first")
        out[w.mac] = str(ip)
    ops: list[Op] = []
    for name in dict.fromkeys(w.network for w in new):
        ipam = network.network(name).ipam  # type: ignore[union-attr]
        assert ipam is not None
        mine = [w for w in new if w.network == name]
        used = taken(store, name)
        for w in mine:
            if w.ip is not None and w.ip in used:
                raise Conflict(f"address {w.ip} on network {name} is taken by "
                               f"{_holder(store, name, w.ip)}",
                               hint=f"`ahvlite net show {name}` lists the allocations")
        used |= {w.ip for w in mine if w.ip is not None}
        free = iter(choose(name, ipam, used, sum(1 for w in mine if w.ip is None),
                           skip=skip))
        for w in mine:
            ip = w.ip if w.ip is not None else next(free)
            out[w.mac] = str(ip)
            ops.append(Put(addr_key(name, ip), _encode(
                {"mac": w.mac, "vm": w.vm, "vm_uuid": w.vm_uuid, "by": by, "at": now}),
                MUST_NOT_EXIST))
            ops.append(Put(mac_key(name, w.mac), _encode(
                {"ip": str(ip), "vm": w.vm, "vm_uuid": w.vm_uuid}), MUST_NOT_EXIST))
    return out, ops


def release(store: DocStore, nics: Iterable[tuple[str, str]], vm_uuid: str | None, *,
            now: float) -> dict[str, str]:
    """Free the addresses of ``nics`` ((MAC, network) pairs) held for ``vm_uuid``
    (None: for whichever VM) in one transaction; returns {MAC: address} freed. A MAC
    with no allocation, or one held for another VM, is left alone."""
    pairs = [(m, n) for m, n in nics if MAC_RE.fullmatch(m) and NET_RE.fullmatch(n)]
    for _ in range(TRIES):
        ops: list[Op] = []
        freed: dict[str, str] = {}
        for mac, network in pairs:
            got = store.get(mac_key(network, mac))
            doc = _doc(got.value) if got else None
            if got is None or doc is None or (vm_uuid is not None
                                              and doc.get("vm_uuid") != vm_uuid):
                continue
            ops.append(Delete(mac_key(network, mac), got.version))
            ip = _ip(doc.get("ip"))
            if ip is not None:
                held = store.get(addr_key(network, ip))
                hdoc = _doc(held.value) if held else None
                if held is not None and hdoc is not None and hdoc.get("mac") == mac.lower():
                    ops.append(Delete(addr_key(network, ip), held.version))
                    freed[mac.lower()] = str(ip)
        if not ops:
            return {}
        try:
            store.transaction([*ops, _gen(now)])
            return freed
        except (VersionMismatch, NotFound):
            continue
    raise Conflict("IPAM release: allocations changed by others "
                   f"{TRIES} times in a row", hint="try again")


def release_address(store: DocStore, network: str, ip: IPv4Address, *, now: float
                    ) -> Allocation | None:
    """Free one address whatever holds it (an orphan whose VM is gone)."""
    got = store.get(addr_key(network, ip))
    if got is None:
        return None
    doc = _doc(got.value) or {}
    ops: list[Op] = [Delete(addr_key(network, ip), got.version)]
    mac = doc.get("mac")
    if isinstance(mac, str) and MAC_RE.fullmatch(mac):
        m = store.get(mac_key(network, mac))
        if m is not None and _ip((_doc(m.value) or {}).get("ip")) == ip:
            ops.append(Delete(mac_key(network, mac), m.version))
    store.transaction([*ops, _gen(now)])
    return Allocation(network, str(ip), str(mac), str(doc.get("vm")), str(doc.get("vm_uuid")))


def allocations(store: DocStore, network: str) -> list[Allocation]:
    """Every allocation of ``network`` by address (read from the MAC keys, which name
    the address; documents that do not parse are skipped)."""
    out = []
    for mac, v in store.children(f"{net_key(network)}/mac").items():
        doc = _doc(v.value)
        ip = _ip((doc or {}).get("ip"))
        if doc is None or ip is None or not MAC_RE.fullmatch(mac):
            continue
        out.append(Allocation(network, str(ip), mac.lower(), str(doc.get("vm", "")),
                              str(doc.get("vm_uuid", ""))))
    return sorted(out, key=lambda a: IPv4Address(a.ip))


def by_mac(store: DocStore, network: NetworkSpec) -> dict[str, Allocation]:
    """Every allocation of every managed network, by MAC."""
    return {a.mac: a for n in network.networks if n.ipam is not None
            for a in allocations(store, n.name)}


def generation(store: DocStore) -> int:
    """The version of ``ipam/gen`` (-1 before the first allocation): it changes with
    every allocate and release."""
    got = store.get(GEN_KEY)
    return -1 if got is None else got.version


def check_deletable(store: DocStore, network: str) -> None:
    """Conflict listing the VMs while ``network`` has allocations."""
    held = allocations(store, network)
    if held:
        vms = sorted({a.vm for a in held})
        raise Conflict(f"network {network} has {len(held)} allocated address(es), of VMs "
                       f"{', '.join(vms[:10])}" + (" ..." if len(vms) > 10 else ""),
                       hint="remove their NICs or delete the VMs first")



def check_change(store: DocStore, network: str, old: IpamSpec | None,
                 new: IpamSpec | None) -> list[str]:
    """Whether network ``network`` may go from ``old`` to ``new`` IPAM settings with
    the allocations it holds: Conflict naming what cannot change while addresses are
    allocated (managed or not, the subnet, the DHCP server; a gateway or server that is
    a NIC's address); warnings for allocations a shrunk pool no longer covers (they are
    kept)."""
    held = allocations(store, network) if old is not None else []
    if not held:
        return []
    vms = sorted({a.vm for a in held})
    busy = f"while {len(held)} address(es) are allocated (VMs {', '.join(vms[:10])})"
    if new is None:
        raise Conflict(f"network {network} cannot become unmanaged {busy}")
    assert old is not None
    for field, was, now in (("subnet", old.subnet, new.subnet),
                            ("dhcp_server", old.server, new.server)):
        if was != now:
            raise Conflict(f"network {network}: {field} cannot change from {was} to {now} "
                           f"{busy}", hint="remove their NICs first")
    ips = {a.ip: a for a in held}
    for field, ip in (("gateway", new.gateway), ("dhcp_server", new.server)):
        if ip is not None and str(ip) in ips:
            a = ips[str(ip)]
            raise Conflict(f"network {network}: {field} {ip} is the address of {a.vm} "
                           f"({a.mac})")
    outside = [a for a in held if not new.in_pools(IPv4Address(a.ip))
               and old.in_pools(IPv4Address(a.ip))]
    if outside:
        return [f"network {network}: {len(outside)} allocated address(es) are outside the "
                f"pools now and stay allocated: "
                + ", ".join(f"{a.ip} ({a.vm})" for a in outside[:10])]
    return []


# -- what tasks call --------------------------------------------------------------------

def allocate_vms(cluster: ClusterSpec, specs: list[VmSpec], *, by: str,
                 now: Callable[[], float]) -> dict[str, str]:
    """Addresses for every NIC on a managed network of ``specs`` (each NIC with its
    MAC), in one transaction: {MAC: address}. The store (and the clock) are touched
    only when a NIC needs one."""
    wants = [w for s in specs for w in wants_of(cluster.network, s.name, s.uuid, s.nics)]
    if not wants:
        return {}
    return allocate(cluster.state.store, cluster.network, wants, by=by, now=now())


def managed_pairs(network: NetworkSpec, nics: Iterable[tuple[str | None, str | None]]
                  ) -> list[tuple[str, str]]:
    """The (MAC, network) pairs of ``nics`` on managed networks (what to release)."""
    return [(mac.lower(), net) for mac, net in nics if mac and net
            and (n := network.network(net)) is not None and n.ipam is not None]


def release_vm(cluster: ClusterSpec, spec: VmSpec, *, now: Callable[[], float]
               ) -> dict[str, str]:
    """Free what ``spec``'s NICs hold (for its UUID only)."""
    pairs = managed_pairs(cluster.network, [(n.mac, n.network) for n in spec.nics])
    if not pairs:
        return {}
    return release(cluster.state.store, pairs, spec.uuid, now=now())


def check_networks(store: DocStore, old: NetworkSpec, new: NetworkSpec) -> list[str]:
    """A whole network spec replaced (``cluster apply -f``): each managed network that
    goes, or changes, passes the same checks as ``net delete`` and ``net update``."""
    warnings: list[str] = []
    for net in old.networks:
        if net.ipam is None:
            continue
        now = new.network(net.name)
        if now is None:
            check_deletable(store, net.name)
        else:
            warnings += check_change(store, net.name, net.ipam, now.ipam)
    return warnings
