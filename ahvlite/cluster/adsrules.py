"""ADS rules in cluster state, key ``ads-rules`` (the shape of :meth:`Rules.to_dict`),
and the live CPU load of each host that power-on placement reads."""

from __future__ import annotations

from typing import Any

from ahvlite.cluster.state import ClusterState
from ahvlite.errors import AhvliteError, Conflict, InvalidSpec, NotFound
from ahvlite.sched.model import AntiAffinityGroup, Rules, VmHostAffinity
from ahvlite.sched.poweron import HostLoad
from ahvlite.sched.snapshot import RUNNING
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.virt.conn import Connection
from ahvlite.virt.stats import sample_host

RULES_KEY = "ads-rules"


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


def host_loads(conns: dict[str, Connection]) -> dict[str, HostLoad | None]:
    """Each host's CPUs and running VMs now (None where they cannot be read: that host
    is then placed by memory and rules alone)."""
    out: dict[str, HostLoad | None] = {}
    for name, conn in conns.items():
        try:
            counters = sample_host(conn)
        except AhvliteError:
            out[name] = None
            continue
        out[name] = HostLoad(counters.cpus, tuple((d.name, d.vcpus or 1)
                                                  for d in counters.domains
                                                  if d.state in RUNNING))
    return out
