"""The live cluster as ADS input: a snapshot (:mod:`ahvlite.sched.snapshot` builds the
Problem from the facts read here) and the stats records it reads.

Where the demand history comes from, best first: the leader's history of the
``stats/HOST`` records each host's own controller publishes, the store (the newest
record per host: one sample), or two local samples ``sample_s`` apart (hosts whose
controller publishes nothing). The ADS rules are in :mod:`ahvlite.cluster.adsrules`.
"""

from __future__ import annotations

import json
from typing import Any

from ahvlite.clock import SYSTEM
from ahvlite.cluster import schedulable, vms
from ahvlite.cluster.adsrules import load_rules
from ahvlite.errors import AhvliteError
from ahvlite.kv import DocStore
from ahvlite.sched.model import Problem
from ahvlite.sched.snapshot import Records, problem_from
from ahvlite.sched.stats import host_stats, parse_host_stats
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.virt.stats import sample_host

LAST_RUN_KEY = "ads-last-run"  # the last `ads run`: {"at", "plan", "migrations", "error"}
STATS_PREFIX = "stats"


# -- snapshot -----------------------------------------------------------------------

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
