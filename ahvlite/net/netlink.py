"""Links, addresses, routes and network namespaces through netlink (pyroute2).

Every function names its intent; pyroute2 is imported nowhere else. netlink errors
become OperationFailed with the kernel's message and the object involved.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import IPRoute, NetlinkError, NetNS, netns

from ahvlite.errors import OperationFailed, OperationTimeout

NETNS_DIR = Path("/run/netns")
IN6_ADDR_GEN_MODE_NONE = 1  # linux/if_link.h: no IPv6 link-local address on the link


@contextmanager
def _socket(ns: str | None) -> Iterator[IPRoute]:
    sock = NetNS(ns) if ns else IPRoute()
    try:
        yield sock
    finally:
        sock.close()


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        raise OperationFailed(f"{what}: {os.strerror(exc.code)} (netlink error {exc.code})") \
            from None


def _index(sock: IPRoute, ifname: str) -> int | None:
    found = sock.link_lookup(ifname=ifname)
    return found[0] if found else None


def _require_index(sock: IPRoute, ifname: str, ns: str | None) -> int:
    idx = _index(sock, ifname)
    if idx is None:
        where = f"namespace {ns}" if ns else "the root namespace"
        raise OperationFailed(f"interface {ifname} does not exist in {where}")
    return idx


# -- namespaces ---------------------------------------------------------------

def create_netns(name: str) -> None:
    with _translated(f"create network namespace {name}"):
        netns.create(name)


def ensure_netns(name: str) -> None:
    """Network namespace ``name`` with ``lo`` up, created if missing."""
    if not (NETNS_DIR / name).exists():
        create_netns(name)
    set_link_up("lo", ns=name)


def delete_netns(name: str) -> None:
    if (NETNS_DIR / name).exists():
        with _translated(f"delete network namespace {name}"):
            netns.remove(name)


def list_netns() -> list[str]:
    return sorted(netns.listnetns())


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


# -- links --------------------------------------------------------------------

def link_exists(ifname: str, *, ns: str | None = None) -> bool:
    with _socket(ns) as sock:
        return _index(sock, ifname) is not None


def links_with_prefix(prefix: str, *, ns: str | None = None) -> list[str]:
    with _socket(ns) as sock:
        names = [link.get_attr("IFLA_IFNAME") for link in sock.get_links()]
    return sorted(n for n in names if n.startswith(prefix))


def create_bridge(name: str, *, ns: str | None = None) -> None:
    """A Linux bridge with STP off (nothing loops in the lab), created if missing."""
    with _socket(ns) as sock, _translated(f"create bridge {name}"):
        if _index(sock, name) is None:
            sock.link("add", ifname=name, kind="bridge", br_stp_state=0,
                      br_forward_delay=0)


def create_isolated_bridge(name: str) -> None:
    """A bridge in the root namespace that only carries frames between its ports.

    No IPv4 address is ever added, and IPv6 address generation is off (no link-local
    address either), so the root namespace has no route onto it and nothing on it can
    leave the machine. Created if missing, then set up.
    """
    create_bridge(name)
    with IPRoute() as ipr, _translated(f"isolate bridge {name}"):
        idx = _require_index(ipr, name, None)
        ipr.link("set", index=idx, IFLA_AF_SPEC={"attrs": [
            ("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE)]})]})
        ipr.link("set", index=idx, state="up")


def move_to_bridge(ifname: str, bridge: str) -> None:
    """Make root-namespace link ``ifname`` a port of ``bridge`` (leaving its old one), up."""
    with IPRoute() as ipr, _translated(f"move {ifname} onto bridge {bridge}"):
        br = _require_index(ipr, bridge, None)
        ipr.link("set", index=_require_index(ipr, ifname, None), master=br, state="up")


def link_master(ifname: str, *, ns: str | None = None) -> str | None:
    """The bridge (or bond) ``ifname`` is a port of; None if none or no such link."""
    with _socket(ns) as sock:
        idx = _index(sock, ifname)
        if idx is None:
            return None
        master = sock.get_links(idx)[0].get_attr("IFLA_MASTER")
        if not master:
            return None
        found = sock.get_links(master)
        return found[0].get_attr("IFLA_IFNAME") if found else None


def create_veth_into(root_end: str, ns_end: str, ns: str, *, bridge: str) -> None:
    """A veth pair: one end enslaved to ``bridge`` here, the other inside ``ns``."""
    with IPRoute() as ipr, _translated(f"create veth {root_end} <-> {ns}:{ns_end}"):
        if _index(ipr, root_end) is None:
            ipr.link("add", ifname=root_end, kind="veth",
                     peer={"ifname": ns_end, "net_ns_fd": ns})
        br = _require_index(ipr, bridge, None)
        ipr.link("set", index=_require_index(ipr, root_end, None), master=br, state="up")


def create_veth_pair(near: str, far: str, *, far_ns: str, far_mac: str | None = None,
                     ns: str | None = None) -> None:
    """A veth pair: ``near`` in ``ns`` (None: ours), its peer ``far`` inside ``far_ns``.

    Both ends come up; the far end never gets an IPv6 link-local address (a DHCP
    responder's port should only ever say what dnsmasq says). Nothing is done if
    ``near`` exists already.
    """
    with _socket(ns) as sock, _translated(f"create veth {near} <-> {far_ns}:{far}"):
        if _index(sock, near) is None:
            peer: dict[str, object] = {"ifname": far, "net_ns_fd": far_ns}
            if far_mac:
                peer["address"] = far_mac
            sock.link("add", ifname=near, kind="veth", peer=peer)
        sock.link("set", index=_require_index(sock, near, ns), state="up")
    with _socket(far_ns) as sock, _translated(f"set {far} up in {far_ns}"):
        idx = _require_index(sock, far, far_ns)
        sock.link("set", index=idx, IFLA_AF_SPEC={"attrs": [
            ("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE)]})]})
        sock.link("set", index=idx, state="up")


def link_index(ifname: str, *, ns: str | None = None) -> int | None:
    with _socket(ns) as sock:
        return _index(sock, ifname)


def link_mac(ifname: str, *, ns: str | None = None) -> str | None:
    with _socket(ns) as sock:
        idx = _index(sock, ifname)
        if idx is None:
            return None
        return str(sock.get_links(idx)[0].get_attr("IFLA_ADDRESS"))


def delete_link(ifname: str, *, ns: str | None = None) -> None:
    """Delete ``ifname``; a link that is already gone is not an error."""
    with _socket(ns) as sock, _translated(f"delete {ifname}"):
        idx = _index(sock, ifname)
        if idx is None:
            return
        try:
            sock.link("del", index=idx)
        except NetlinkError as exc:
            # A veth vanishes by itself when the namespace holding its peer is
            # destroyed, which the kernel does asynchronously: it can go between our
            # lookup and the delete.
            if exc.code != errno.ENODEV:
                raise


def set_link_up(ifname: str, *, ns: str | None = None) -> None:
    with _socket(ns) as sock, _translated(f"set {ifname} up"):
        sock.link("set", index=_require_index(sock, ifname, ns), state="up")


def set_link_down(ifname: str, *, ns: str | None = None) -> None:
    """Take ``ifname`` down (its veth peer loses carrier: a pulled cable)."""
    with _socket(ns) as sock, _translated(f"set {ifname} down"):
        sock.link("set", index=_require_index(sock, ifname, ns), state="down")


def wait_for_link(ifname: str, *, ns: str | None = None, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not link_exists(ifname, ns=ns):
        if time.monotonic() > deadline:
            raise OperationTimeout(f"interface {ifname} did not appear in {timeout_s:.0f} s")
        time.sleep(0.05)


def add_address(ifname: str, address: str, *, ns: str | None = None) -> None:
    """Add ``address`` (CIDR) to ``ifname`` unless it is already there."""
    iface = ipaddress.IPv4Interface(address)
    with _socket(ns) as sock, _translated(f"add {address} to {ifname}"):
        idx = _require_index(sock, ifname, ns)
        present = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in sock.get_addr(index=idx)}
        if (str(iface.ip), iface.network.prefixlen) not in present:
            sock.addr("add", index=idx, address=str(iface.ip),
                      prefixlen=iface.network.prefixlen)


def set_only_address(ifname: str, address: str, *, ns: str | None = None) -> bool:
    """Make ``address`` (CIDR) the one IPv4 address of ``ifname``; True if it changed."""
    iface = ipaddress.IPv4Interface(address)
    want = (str(iface.ip), iface.network.prefixlen)
    with _socket(ns) as sock, _translated(f"set {address} on {ifname}"):
        idx = _require_index(sock, ifname, ns)
        present = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                   for a in sock.get_addr(family=2, index=idx)}
        if present == {want}:
            return False
        for ip, prefix in present - {want}:
            sock.addr("del", index=idx, address=ip, prefixlen=prefix)
        if want not in present:
            sock.addr("add", index=idx, address=want[0], prefixlen=want[1])
        return True


def bridge_ports(bridge: str, *, ns: str | None = None) -> list[str]:
    with _socket(ns) as sock:
        br = _index(sock, bridge)
        if br is None:
            return []
        return sorted(link.get_attr("IFLA_IFNAME") for link in sock.get_links()
                      if link.get_attr("IFLA_MASTER") == br)


# -- routes -------------------------------------------------------------------

def route_device(address: str, *, ns: str | None = None) -> str | None:
    """The interface the kernel would send a packet to ``address`` through."""
    with _socket(ns) as sock:
        try:
            routes = sock.route("get", dst=address)
        except NetlinkError:
            return None
        if not routes:
            return None
        oif = routes[0].get_attr("RTA_OIF")
        links = sock.get_links(oif)
        return links[0].get_attr("IFLA_IFNAME") if links else None


def overlapping_networks(subnet: ipaddress.IPv4Network) -> list[tuple[str, str]]:
    """Routes and addresses in the root namespace that overlap ``subnet``.

    A default route does not count; anything more specific means the subnet already
    leads somewhere, and the lab must not take it over.
    """
    found: list[tuple[str, str]] = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for route in ipr.get_routes(family=2, table=254):
            dst = route.get_attr("RTA_DST")
            if dst is None or route["dst_len"] == 0:
                continue
            net = ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False)
            if net.overlaps(subnet):
                found.append((str(net), names.get(route.get_attr("RTA_OIF"), "?")))
        for addr in ipr.get_addr(family=2):
            net = ipaddress.IPv4Interface(
                f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}").network
            if net.overlaps(subnet):
                found.append((str(net), names.get(addr["index"], "?")))
    return sorted(set(found))
