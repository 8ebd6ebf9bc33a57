"""Ask every ZooKeeper member directly whether it serves (the ``srvr`` command).

A host agent that cannot renew its lease asks this to tell a store election (a
majority of members answer "not currently serving") from its own isolation. A TCP
connect proves nothing: a member without quorum still accepts connections (its client
port opens before it has a leader), which is how a host cut off together with one
member kept its VMs while the majority restarted them. Only the member's own answer
counts, and only from a majority of the configured ensemble (see docs/ha.md).

Every member is asked in parallel, name resolution included, and the whole call
returns after ``timeout_s`` whatever is still pending (a pending member counts as
unreachable), so a dead DNS server cannot stall the agent. A store behind TLS is asked
over TLS on the same port (ZooKeeper's Netty server answers four-letter words there),
with the client's certificate and the member's certificate checked against its address.
"""

from __future__ import annotations

import functools
import socket
import ssl
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

from ahvlite.clock import SYSTEM, Clock
from ahvlite.controller.coord.api import MemberState
from ahvlite.controller.coord.url import ZkTls
from ahvlite.errors import InvalidSpec

NOT_SERVING = "not currently serving"
SERVING_MODES = ("leader", "follower", "standalone", "observer")
# One pool for the process: a stuck lookup keeps its thread, never the caller.
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="srvr")

Asker = Callable[[str, int, float], str]


def tls_context(tls: ZkTls) -> ssl.SSLContext:
    """A client context for ZooKeeper's TLS port: the cluster CA only, our certificate,
    and the member's certificate must name the address we asked for."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=str(tls.ca))
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    except (ssl.SSLError, OSError) as exc:
        raise InvalidSpec("AHVLITE_STORE_TLS_DIR", str(tls.ca.parent),
                          f"PEM files: CA, certificate and its key ({exc})") from None
    return ctx


def srvr(host: str, port: int, timeout_s: float, context: ssl.SSLContext | None = None) -> str:
    """The ``srvr`` answer of one member (raises OSError when it cannot be had; a TLS
    failure is an ssl.SSLError, itself an OSError)."""
    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        raw.settimeout(timeout_s)
        s = raw if context is None else context.wrap_socket(raw, server_hostname=host)
        try:
            s.sendall(b"srvr")
            chunks = []
            while data := s.recv(4096):
                chunks.append(data)
        finally:
            if s is not raw:
                s.close()
    return b"".join(chunks).decode(errors="replace")


def asker(tls: ZkTls | None) -> Asker:
    """How to ask members: in clear, or over TLS with ``tls``'s files (read once)."""
    if tls is None:
        return srvr
    return functools.partial(srvr, context=tls_context(tls))


def state_of(answer: str) -> str:
    """``serving``, ``electing`` or ``unreachable`` from a ``srvr`` answer."""
    if NOT_SERVING in answer:
        return "electing"
    for line in answer.splitlines():
        if line.startswith("Mode:") and line.split(":", 1)[1].strip() in SERVING_MODES:
            return "serving"
    return "unreachable"  # an answer we do not understand proves nothing


def probe(members: Sequence[tuple[str, int]], timeout_s: float = 0.5, *,
          ask: Asker = srvr, clock: Clock = SYSTEM) -> list[MemberState]:
    """Each member's state, in the order given, within about ``timeout_s``."""
    deadline = clock.monotonic() + timeout_s

    def one(hp: tuple[str, int]) -> str:
        left = max(deadline - clock.monotonic(), 0.05)
        try:
            return state_of(ask(hp[0], hp[1], left))
        except OSError:
            return "unreachable"

    futures = [_POOL.submit(one, hp) for hp in members]
    wait(futures, timeout=timeout_s + 0.05)
    return [MemberState(f"{h}:{p}", f.result() if f.done() else "unreachable")
            for (h, p), f in zip(members, futures, strict=True)]


def majority_electing(states: Sequence[MemberState], ensemble_size: int) -> bool:
    """A majority of the configured ensemble says it is electing: no quorum exists, so
    nobody can commit a write until the election ends."""
    electing = sum(1 for s in states if s.state == "electing")
    return ensemble_size > 0 and electing >= ensemble_size // 2 + 1
