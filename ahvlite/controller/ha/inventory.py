"""The cluster as HA sees it (hosts' memory, running VMs) and admission checks at
power-on. I/O through ``cluster.vms``; the maths is in ``reservation``."""

from __future__ import annotations

from typing import Any

from ahvlite.cluster import vms
from ahvlite.cluster.schedulable import unschedulable_hosts
from ahvlite.controller.ha.config import load_settings
from ahvlite.controller.ha.reservation import (
    HostMem,
    VmLoad,
    admit,
    admit_moves,
    reservation,
)
from ahvlite.controller.ha.settings import HaSettings
from ahvlite.errors import Conflict
from ahvlite.sched.restart import VmRecord
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.virt.guest import ACTIVE_STATES


def _gather(cluster: ClusterSpec, hosts: vms.Hosts | None = None
            ) -> tuple[list[HostMem], list[VmLoad], list[vms.VmInfo], dict[str, str]]:
    """Hosts' memory and running VMs, read through ``hosts`` (the operation's
    connections) or, without, connections opened for this read alone."""
    if hosts is None:
        with vms.connect(cluster) as opened:
            return _gather(cluster, opened)
    caps = vms.capacities(hosts)
    found = vms.list_on(hosts)
    unreachable = dict(hosts.errors)
    host_mem = [HostMem(c.name, c.total_mib) for c in caps if c.reachable]
    loads = [VmLoad(v.name, v.host, v.current_memory_mib or v.memory_mib,
                    VmRecord(v.name, v.host, v.memory_mib, True, v.labels,
                             getattr(v, "pinned", False)).protected)
             for v in found if v.state in ACTIVE_STATES]
    return host_mem, loads, found, unreachable


def show(cluster: ClusterSpec) -> dict[str, Any]:
    """Mode, reservation per host, protected VMs and failover capacity."""
    settings = load_settings(cluster.state)
    host_mem, loads, found, unreachable = _gather(cluster)
    res = reservation(settings, host_mem, loads)
    protected = []
    for v in found:
        rec = VmRecord(v.name, v.host, v.memory_mib, v.state in ACTIVE_STATES, v.labels,
                       getattr(v, "pinned", False))
        protected.append({"name": v.name, "host": v.host, "state": v.state,
                          "memory_mib": v.memory_mib, "priority": rec.priority,
                          "protected": rec.protected,
                          "why_not": "" if rec.protected else
                          ("CVM" if rec.is_cvm else "pinned")})
    used = {h.name: sum(x.memory_mib for x in loads if x.host == h.name) for h in host_mem}
    return {"settings": settings.to_doc(),
            "hosts": [{"name": h.name, "total_mib": h.total_mib, "used_mib": used[h.name],
                       "reserved_mib": res.per_host_mib.get(h.name, 0),
                       "segments_mib": list(res.segments_mib.get(h.name, ()))}
                      for h in host_mem],
            "reservation": res.to_dict(), "vms": protected, "unreachable": unreachable}


def check_power_on(cluster: ClusterSpec, name: str, *,
                   memory_mib: int | None = None, host: str | None = None,
                   labels: dict[str, str] | None = None,
                   settings: HaSettings | None = None,
                   hosts: vms.Hosts | None = None) -> str | None:
    """In guarantee mode: the host the VM may run on, or Conflict saying what is missing.

    For an existing VM pass only ``name``; for a new one its memory, labels and maybe
    ``host``. Default mode: None (no check; placement decides). ``hosts``: the
    operation's connections, when the caller holds them for what comes next.
    """
    settings = settings or load_settings(cluster.state)
    if settings.mode != "guarantee":
        return None
    host_mem, loads, found, _ = _gather(cluster, hosts)
    if memory_mib is None:
        match = [v for v in found if v.name == name]
        if not match:
            return None  # the start itself reports the missing VM
        v = match[0]
        if v.state in ACTIVE_STATES:
            return v.host
        memory_mib, host, labels = v.memory_mib, v.host, v.labels
        pinned = bool(getattr(v, "pinned", False))
    else:
        pinned = False
    protected = VmRecord(name, host or "", memory_mib, True, labels or {}, pinned).protected
    verdict = admit(settings, host_mem, loads, name=name, memory_mib=memory_mib, host=host,
                    protected=protected)
    if not verdict.ok:
        raise Conflict(verdict.message,
                       hint="stop other VMs, add a host, or `ahvlite ha set --mode default`")
    return verdict.host


def check_moves(cluster: ClusterSpec, moves: list[tuple[str, str]], *,
                settings: HaSettings | None = None) -> None:
    """In guarantee mode: Conflict naming the missing memory when these live moves
    (``(vm, destination)``: a migration, a maintenance evacuation, an ADS plan) would
    break the HA reservation. The one check every move goes through on the leader.

    Hosts in maintenance do not count as room for restarts (HA never restarts a VM
    there), so emptying a host cannot pass off that host as the reserve."""
    settings = settings or load_settings(cluster.state)
    if settings.mode != "guarantee" or not moves:
        return
    host_mem, loads, _, _ = _gather(cluster)
    closed = unschedulable_hosts(cluster.state)
    host_mem = [h for h in host_mem if h.name not in closed]
    verdict = admit_moves(settings, host_mem, loads, moves)
    if not verdict.ok:
        raise Conflict(verdict.message,
                       hint="add a host, stop VMs, or `ahvlite ha set --mode default`")


def check_settings(cluster: ClusterSpec, new: HaSettings, old: HaSettings) -> None:
    """Conflict naming the missing memory when ``new`` asks for a guarantee the cluster
    cannot give now (entering guarantee mode, or making it stricter). A change that
    leaves the guarantee no worse than it is (timings, going back to default) passes."""
    if new.mode != "guarantee":
        return
    host_mem, loads, _, _ = _gather(cluster)
    closed = unschedulable_hosts(cluster.state)
    host_mem = [h for h in host_mem if h.name not in closed]
    after = reservation(new, host_mem, loads)
    if after.ok:
        return
    if old.mode == "guarantee" and after.missing_mib <= reservation(old, host_mem,
                                                                     loads).missing_mib:
        return
    raise Conflict(f"the HA guarantee (RF{new.rf}, {new.reservation} reservation) does not "
                   f"hold with the VMs running now: {after.missing_mib} MiB missing "
                   f"({after.detail})",
                   hint="stop or move VMs, add a host, or choose another --reservation / "
                        "--rf; `ahvlite ha show` shows the reservation")
