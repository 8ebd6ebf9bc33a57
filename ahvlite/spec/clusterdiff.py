"""What applying a cluster document changes (pure): hosts added, removed or changed,
networks, pools, labels, and which documents beside a cluster file would be imported.

Both sides are the JSON form of a :class:`~ahvlite.spec.cluster.ClusterSpec`
(``model_dump(mode="json", exclude_none=True)``), so the CLI's ``--dry-run`` and the
leader's ``cluster.apply`` compute the same diff from the same data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Doc = dict[str, Any]


@dataclass(frozen=True)
class Change:
    what: str  # cluster | host | network | networking | pool | label
    name: str
    action: str  # add | remove | change
    fields: tuple[str, ...] = ()  # for a change: which fields differ

    def describe(self) -> str:
        detail = f" ({', '.join(self.fields)})" if self.fields else ""
        return f"{self.action} {self.what} {self.name}{detail}"


@dataclass(frozen=True)
class SpecDiff:
    changes: list[Change] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)  # keys the store does not have yet
    kept: list[str] = field(default_factory=list)  # keys the store has: never overwritten

    @property
    def empty(self) -> bool:
        return not self.changes and not self.imports

    def hosts(self, action: str) -> list[str]:
        return [c.name for c in self.changes if c.what == "host" and c.action == action]

    def changed_host_fields(self, name: str) -> tuple[str, ...]:
        return next((c.fields for c in self.changes if c.what == "host" and c.name == name
                     and c.action == "change"), ())

    def to_dict(self) -> dict[str, Any]:
        return {"changes": [asdict(c) | {"fields": list(c.fields)} for c in self.changes],
                "imports": list(self.imports), "kept": list(self.kept)}


def _by_name(items: Any) -> dict[str, Doc]:
    return {i["name"]: i for i in items or [] if isinstance(i, dict) and "name" in i}


def _named(what: str, before: Any, after: Any) -> list[Change]:
    old, new = _by_name(before), _by_name(after)
    out = [Change(what, n, "add") for n in new if n not in old]
    out += [Change(what, n, "remove") for n in old if n not in new]
    for n in new:
        if n in old and old[n] != new[n]:
            keys = sorted(k for k in old[n].keys() | new[n].keys()
                          if old[n].get(k) != new[n].get(k))
            out.append(Change(what, n, "change", tuple(keys)))
    return out


def diff_specs(before: Doc | None, after: Doc) -> list[Change]:
    """The changes that turn ``before`` (None: no cluster stored yet) into ``after``."""
    if before is None:
        return [Change("cluster", str(after.get("name")), "add"),
                *(Change("host", h, "add") for h in _by_name(after.get("hosts"))),
                *(Change("network", n, "add")
                  for n in _by_name((after.get("network") or {}).get("networks")))]
    out: list[Change] = []
    if before.get("name") != after.get("name"):
        out.append(Change("cluster", str(after.get("name")), "change", ("name",)))
    out += _named("host", before.get("hosts"), after.get("hosts"))
    net_before, net_after = before.get("network") or {}, after.get("network") or {}
    out += _named("network", net_before.get("networks"), net_after.get("networks"))
    for key in sorted((net_before.keys() | net_after.keys()) - {"networks"}):
        if net_before.get(key) != net_after.get(key):
            out.append(Change("networking", key, "change"))
    if before.get("shared_pool") != after.get("shared_pool"):
        pool = after.get("shared_pool") or before.get("shared_pool")
        action = ("add" if before.get("shared_pool") is None else
                  "remove" if after.get("shared_pool") is None else "change")
        out.append(Change("pool", str(pool), action))
    old_labels, new_labels = before.get("labels") or {}, after.get("labels") or {}
    for key in sorted(old_labels.keys() | new_labels.keys()):
        if key not in old_labels:
            out.append(Change("label", key, "add"))
        elif key not in new_labels:
            out.append(Change("label", key, "remove"))
        elif old_labels[key] != new_labels[key]:
            out.append(Change("label", key, "change"))
    return out


def plan_imports(offered: list[str], have: set[str]) -> tuple[list[str], list[str]]:
    """Documents offered for import: (those the store lacks, those it has and keeps)."""
    return (sorted(k for k in offered if k not in have),
            sorted(k for k in offered if k in have))


def diff(before: Doc | None, after: Doc, offered: list[str] | None = None,
         have: set[str] | None = None) -> SpecDiff:
    imports, kept = plan_imports(offered or [], have or set())
    return SpecDiff(diff_specs(before, after), imports, kept)
