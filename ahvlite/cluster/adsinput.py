"""The live cluster as ADS input: rules in cluster state, snapshots, power-on placement.

ADS rules live in ``ClusterState`` key ``ads-rules`` (the shape of
:meth:`Rules.to_dict`). A snapshot is a :class:`~ahvlite.controller.ads.model.Problem`:
hosts (CPU capacity = cores x 100, memory, schedulable unless in maintenance or not
answering), running VMs (memory, CPU demand history in percent of a core = the stats'
``cpu_pct`` x vCPUs, pinned), and the storage service of each host: the VM labelled
``ahvlite.io/role=cvm`` (allocation = its vCPUs x 100, demand = its CPU). The CVM's
load is attributed to the host's other VMs by their share of disk bytes, so moving an
I/O-heavy VM moves that load to the destination's CVM.

Where the demand history comes from, best first: the leader's history of the
``stats/HOST`` records each host's own controller publishes, the store (the newest
record per host: one sample), or two local samples ``sample_s`` apart (hosts whose
controller publishes nothing).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from ahvlite.clock import SYSTEM
from ahvlite.cluster import schedulable, vms
from ahvlite.cluster.state import ClusterState
from ahvlite.controller.ads.model import (
    AntiAffinityGroup,
    Host,
    Problem,
    Rules,
    Vm,
    VmHostAffinity,
)
from ahvlite.controller.ads.placement import rank
from ahvlite.controller.stats import History, host_stats, parse_host_stats
from ahvlite.errors import AhvliteError, Conflict, InvalidSpec, NotFound
from ahvlite.kv import DocStore
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.labels import ROLE_LABEL
from ahvlite.spec.vm import VmSpec
from ahvlite.virt.stats import sample_host

log = logging.getLogger(__name__)

RULES_KEY = "ads-rules"
LAST_RUN_KEY = "ads-last-run"  # the last `ads run`: {"at", "plan", "migrations", "error"}
STATS_PREFIX = "stats"
RUNNING = ("running", "paused", "blocked")  # states that hold CPU and memory on a host

Records = Mapping[str, list[dict[str, Any]]]  # host -> HostStats dicts, oldest first


# -- rules --------------------------------------------------------------------------

def load_rules(state: ClusterState) -> Rules:
    return Rules.from_dict(state.get(RULES_KEY), where=RULES_KEY)


def add_rule(cluster: ClusterSpec, rule: VmHostAffinity | AntiAffinityGroup) -> Rules:
    """Store ``rule``; its name must be new and the hosts it names must exist."""
    known = [h.name for h in cluster.hosts]
    if isinstance(rule, VmHostAffinity):
        for h in rule.hosts:
            if h not in known:
                allowed = (f"hosts of cluster {cluster.name}: {', '.join(known)}" if known
                           else f"the cluster {cluster.name} has no hosts")
                raise InvalidSpec("hosts", h, allowed,
                                  hint=None if known else "`ahvlite host add` first")

    def change(doc: dict[str, Any]) -> dict[str, Any]:
        rules = Rules.from_dict(doc or None, where=RULES_KEY)
        if rule.name in rules.names():
            raise Conflict(f"an ADS rule named {rule.name!r} exists",
                           hint="`ahvlite ads rules remove NAME` first, or another name")
        if isinstance(rule, VmHostAffinity):
            new = Rules((*rules.host_affinity, rule), rules.anti_affinity)
        else:
            new = Rules(rules.host_affinity, (*rules.anti_affinity, rule))
        return new.to_dict()

    doc = cluster.state.update(RULES_KEY, change)
    return Rules.from_dict(doc, where=RULES_KEY)


def remove_rule(state: ClusterState, name: str) -> Rules:
    def change(doc: dict[str, Any]) -> dict[str, Any]:
        rules = Rules.from_dict(doc or None, where=RULES_KEY)
        if name not in rules.names():
            raise NotFound(f"no ADS rule named {name!r}",
                           hint="`ahvlite ads rules list` shows them")
        return Rules(tuple(r for r in rules.host_affinity if r.name != name),
                     tuple(r for r in rules.anti_affinity if r.name != name)).to_dict()

    doc = state.update(RULES_KEY, change)
    return Rules.from_dict(doc, where=RULES_KEY)


# -- snapshot -----------------------------------------------------------------------

def problem_from(cluster: ClusterSpec, infos: list[vms.VmInfo], records: Records, *,
                 memory_mib: Mapping[str, int], closed: set[str], rules: Rules) -> Problem:
    """Build the Problem from VM facts and stats records (no I/O)."""
    hosts = []
    for h in cluster.hosts:
        series = records.get(h.name, [])
        cpus = int(series[-1]["cpus"]) if series else 0
        reachable = bool(series) and h.name in memory_mib
        cvm = next((i for i in infos if i.host == h.name and i.state in RUNNING
                    and i.labels.get(ROLE_LABEL) == "cvm"), None)
        hosts.append(Host(
            h.name, float(max(cpus, 1) * 100), max(memory_mib.get(h.name, 0), 1),
            storage_cpu_alloc_pct=float(cvm.vcpus * 100) if cvm else 0.0,
            storage_cpu_history_pct=_cpu_series(series, cvm.name) if cvm else (),
            schedulable=reachable and h.name not in closed))
    seen: set[str] = set()
    running = []
    for i in infos:
        # Mid-migration a VM shows on both hosts; the source (listed first) counts.
        if i.state in RUNNING and i.host in memory_mib and i.name not in seen:
            seen.add(i.name)
            running.append(i)
    out = []
    for info in running:
        series = records.get(info.host, [])
        role = info.labels.get(ROLE_LABEL)
        cvm = next((i for i in running if i.host == info.host
                    and i.labels.get(ROLE_LABEL) == "cvm"), None)
        storage: tuple[float, ...] = ()
        if cvm is not None and role != "cvm":
            storage = _io_share(series, info.name, cvm.name)
        out.append(Vm(info.name, info.host, info.memory_mib, _cpu_series(series, info.name),
                      storage, pinned=info.pinned or role == "cvm", labels=dict(info.labels)))
    return Problem(tuple(hosts), tuple(out), rules)


def _vm_in(record: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((v for v in record.get("vms", []) if v["name"] == name), None)


def _cpu_series(series: list[dict[str, Any]], name: str) -> tuple[float, ...]:
    out = []
    for rec in series:
        v = _vm_in(rec, name)
        if v is not None and v.get("cpu_pct") is not None:
            out.append(float(v["cpu_pct"]) * int(v.get("vcpus") or 1))
    return tuple(out)


def _io(v: dict[str, Any]) -> float:
    return float(v.get("disk_read_bytes_per_s") or 0) + float(v.get("disk_write_bytes_per_s")
                                                                or 0)


def _io_share(series: list[dict[str, Any]], name: str, cvm: str) -> tuple[float, ...]:
    out = []
    for rec in series:
        me, c = _vm_in(rec, name), _vm_in(rec, cvm)
        if me is None or c is None or c.get("cpu_pct") is None:
            continue
        total = sum(_io(v) for v in rec["vms"] if v["name"] != cvm)
        cvm_load = float(c["cpu_pct"]) * int(c.get("vcpus") or 1)
        out.append(cvm_load * _io(me) / total if total > 0 else 0.0)
    return tuple(out)


def records_of(history: History, cluster: ClusterSpec) -> dict[str, list[dict[str, Any]]]:
    """The controller's in-memory stats history as snapshot records."""
    return {h.name: [s.to_dict() for s in history.series(h.name)] for h in cluster.hosts}


def stored_records(store: DocStore, *, max_age_s: float,
                   now: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """The newest ``stats/HOST`` record of each host, when it is younger than
    ``max_age_s`` (a host whose controller stopped publishing has none); records that
    do not parse are left out."""
    now = SYSTEM.time() if now is None else now
    out = {}
    for name, v in store.children(STATS_PREFIX).items():
        try:
            raw = json.loads(v.value)
        except (ValueError, UnicodeDecodeError):
            continue
        rec = parse_host_stats(raw)
        if rec is not None and rec.host == name and now - rec.at <= max_age_s:
            out[name] = [rec.to_dict()]
    return out


def local_records(hosts: vms.Hosts, sample_s: float,
                  only: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Two samples per host (of ``only``) ``sample_s`` apart -> one stats record each."""
    first = {}
    for name, conn in hosts.conns.items():
        if only is not None and name not in only:
            continue
        try:
            first[name] = sample_host(conn)
        except AhvliteError:
            continue
    SYSTEM.sleep(sample_s)
    out = {}
    for name, prev in first.items():
        try:
            cur = sample_host(hosts.conns[name])
        except AhvliteError:
            continue
        out[name] = [host_stats(name, prev, cur, SYSTEM.time()).to_dict()]
    return out


def snapshot(cluster: ClusterSpec, *, records: Records | None = None,
             sample_s: float = 1.0, sample_missing: bool = False) -> Problem:
    """The live cluster as a Problem; ``records`` from the controller when it has them
    (with ``sample_missing``, hosts without any are sampled here)."""
    infos, _ = vms.list_vms(cluster)
    with vms.connect(cluster) as hosts:
        memory = {c.name: c.total_mib for c in vms.capacities(hosts) if c.reachable}
        if records is None:
            records = local_records(hosts, sample_s)
        elif sample_missing:
            missing = [h for h in hosts.conns if not records.get(h)]
            if missing:
                records = {**records, **local_records(hosts, sample_s, only=missing)}
    closed = schedulable.unschedulable_hosts(cluster.state)
    return problem_from(cluster, infos, records, memory_mib=memory, closed=closed,
                        rules=load_rules(cluster.state))


# -- power-on placement (vm create) -------------------------------------------------

def initial_host(hosts: vms.Hosts, spec: VmSpec, need_mib: int,
                 closed: set[str]) -> str | None:
    """ADS's choice for a new VM, or None when memory is short everywhere (the caller's
    placement then reports it as before). Without stats at hand, a running VM's CPU
    demand counts as all its vCPUs busy: placement balances what is allocated."""
    caps = {c.name: c for c in vms.capacities(hosts) if c.reachable}
    host_list, vm_list = [], []
    seen: set[str] = set()
    for h in hosts.cluster.hosts:
        cap = caps.get(h.name)
        if cap is None:
            host_list.append(Host(h.name, 100.0, 1, schedulable=False))
            continue
        used = cap.total_mib - cap.free_mib
        try:
            counters = sample_host(hosts.conns[h.name])
        except AhvliteError:  # no CPU facts: place by memory and rules alone there
            host_list.append(Host(h.name, 100.0, max(cap.total_mib, 1),
                                  schedulable=h.name not in closed))
            vm_list.append(Vm(f"(load of {h.name})", h.name, max(used, 0), (), pinned=True))
            continue
        running = [d for d in counters.domains if d.state in RUNNING]
        host_list.append(Host(h.name, max(counters.cpus, 1) * 100.0, max(cap.total_mib, 1),
                              schedulable=h.name not in closed))
        # What the host holds now, as one immovable load; the real VMs (no load of
        # their own) are there for anti-affinity by name.
        vm_list.append(Vm(f"(load of {h.name})", h.name, max(used, 0),
                          (100.0 * sum(d.vcpus or 1 for d in running),), pinned=True))
        for d in running:
            if d.name not in seen:  # mid-migration a VM shows on two hosts
                seen.add(d.name)
                vm_list.append(Vm(d.name, h.name, 0, (), pinned=True))
    rules = load_rules(hosts.cluster.state)
    problem = Problem(tuple(host_list), tuple(vm_list), rules)
    new = Vm(spec.name, "", spec.memory_mib, (100.0 * spec.vcpus,))
    placed = rank(problem, new, need_free_mib=need_mib)
    for w in placed.warnings:  # a stale rule must not block `vm create`, but say so
        log.warning("%s", w)
    if placed.host is not None:
        return placed.host
    if placed.only_memory_short:
        return None
    why = "; ".join(f"{h}: {r}" for h, r in sorted(placed.excluded.items()))
    raise Conflict(f"no host can run {spec.name} under the ADS rules ({why})",
                   hint="`ahvlite ads rules list`; pass --host to choose one yourself")
