"""Which store members answer at the network level (TCP connect), apart from our own.

The host agent asks this when it has lost contact with the store: if other members
still accept connections, the network around this host works and the store itself is
unavailable to everyone (a ZooKeeper leader election after a member's host died). The
leader cannot act without the store either, so that is no reason to fence. Only when
no other member answers is the host cut off. This is the role of an "isolation
address" in other HA systems; the store members are the natural ones to ask.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor


def is_local_address(address: str) -> bool:
    """True when ``address`` belongs to this network namespace (it can be bound)."""
    try:
        infos = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((sockaddr[0], 0))
                return True
            except OSError:
                continue
    return False


def _accepts(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def answering(members: Iterable[tuple[str, int]], timeout_s: float = 0.5, *,
              is_local: Callable[[str], bool] = is_local_address) -> list[str]:
    """``host:port`` of the members, other than ones on this host, that accept a TCP
    connection within ``timeout_s`` (asked in parallel, so the whole call takes at most
    about ``timeout_s``)."""
    others = [(h, p) for h, p in members if not is_local(h)]
    if not others:
        return []
    with ThreadPoolExecutor(len(others)) as pool:
        ok = list(pool.map(lambda hp: _accepts(hp[0], hp[1], timeout_s), others))
    return [f"{h}:{p}" for (h, p), yes in zip(others, ok, strict=True) if yes]
