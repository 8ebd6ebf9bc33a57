"""A host's memory as placement sees it, and placement by memory alone: the named host,
else the most free memory (pure). :func:`ahvlite.sched.place.place` is the entry point."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ahvlite.errors import Conflict, HostUnreachable, InvalidSpec


@dataclass(frozen=True)
class HostCapacity:
    name: str
    total_mib: int
    free_mib: int
    reachable: bool = True


def fit(hosts: Sequence[HostCapacity], memory_mib: int, *, requested: str | None = None,
        need_free_mib: int | None = None, pending_mib: Mapping[str, int] | None = None) -> str:
    """The host for a VM of ``memory_mib``: ``requested``, else the most free memory.

    ``need_free_mib`` is what must be free there now (default ``memory_mib``; 0 for a
    VM only defined, less for an overcommitted one). ``pending_mib`` is memory already
    promised on each host by VMs placed in the same batch.
    """
    need = memory_mib if need_free_mib is None else need_free_mib
    pending = pending_mib or {}
    if not hosts:
        raise InvalidSpec("hosts", [], "a cluster with at least one host",
                          hint="`ahvlite host add` one")
    largest = max(h.total_mib for h in hosts)
    if memory_mib > largest:
        raise InvalidSpec("memory_mib", memory_mib,
                          f"at most {largest} MiB (the largest host's memory)")
    if requested is not None:
        match = [h for h in hosts if h.name == requested]
        if not match:
            raise InvalidSpec("host", requested,
                              f"one of {', '.join(h.name for h in hosts)}")
        h = match[0]
        if not h.reachable:
            raise HostUnreachable(f"host {requested} does not answer")
        if memory_mib > h.total_mib:
            raise InvalidSpec("memory_mib", memory_mib,
                              f"at most {h.total_mib} MiB on host {h.name}")
        if h.free_mib - pending.get(h.name, 0) < need:
            raise Conflict(f"host {h.name} has {h.free_mib - pending.get(h.name, 0)} MiB "
                           f"free, the VM needs {need} MiB",
                           hint="pick another --host, or create it without --start")
        return h.name
    candidates = [h for h in hosts if h.reachable]
    if not candidates:
        raise HostUnreachable("no host of the cluster answers")
    best = min(candidates, key=lambda h: (pending.get(h.name, 0) - h.free_mib, h.name))
    if best.free_mib - pending.get(best.name, 0) < need:
        raise Conflict(f"no host has {need} MiB free (most: {best.name} with "
                       f"{best.free_mib - pending.get(best.name, 0)} MiB)",
                       hint="stop VMs, lower --memory-mib, or use --overcommit")
    return best.name
