"""What the ADS planner sees: hosts, VMs, rules, thresholds (pure, frozen data).

Units. CPU is in *percent of one physical core*: 100 = one core fully busy, so a host
with 16 cores has ``cpu_capacity_pct`` 1600 and a 4-vCPU VM whose vCPUs are all busy
demands 400. The storage service (the CVM) has its own CPU allocation in the same unit;
its demand is the host's ``storage_cpu_history_pct`` plus what each VM's I/O adds there
(``Vm.storage_history_pct``), which moves with the VM. Memory is in MiB and is a hard
limit: a host never holds more than ``memory_mib`` of VMs, at any step of a plan.

:meth:`Problem.from_dict` is the snapshot format (``ahvlite ads snapshot``) and the
place where bad input is refused with :class:`~ahvlite.errors.InvalidSpec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from ahvlite.errors import InvalidSpec

AffinityKind = Literal["must", "should"]
AFFINITY_KINDS = ("must", "should")


@dataclass(frozen=True)
class Host:
    name: str
    cpu_capacity_pct: float  # cores * 100
    memory_mib: int
    storage_cpu_alloc_pct: float = 0.0  # 0: no storage service to watch on this host
    storage_cpu_history_pct: tuple[float, ...] = ()  # the service's own load, oldest first
    schedulable: bool = True  # False: in maintenance or not answering; never a target


@dataclass(frozen=True)
class Vm:
    name: str
    host: str
    memory_mib: int
    cpu_history_pct: tuple[float, ...] = ()  # demand samples, oldest first
    storage_history_pct: tuple[float, ...] = ()  # storage-service CPU its I/O causes
    pinned: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VmHostAffinity:
    """``must``: the VMs run only on these hosts. ``should``: ADS prefers them when it
    moves a VM, but a VM is never moved only to satisfy it."""

    name: str
    vms: tuple[str, ...]
    hosts: tuple[str, ...]
    kind: AffinityKind = "must"


@dataclass(frozen=True)
class AntiAffinityGroup:
    """No two VMs of the group on one host (a pair already together is left alone, but
    a move never adds one)."""

    name: str
    vms: tuple[str, ...]


@dataclass(frozen=True)
class Thresholds:
    cpu_pct: float = 85.0  # of the host's CPU capacity
    storage_pct: float = 85.0  # of the storage service's CPU allocation


@dataclass(frozen=True)
class Rules:
    host_affinity: tuple[VmHostAffinity, ...] = ()
    anti_affinity: tuple[AntiAffinityGroup, ...] = ()

    def names(self) -> list[str]:
        return [r.name for r in self.host_affinity] + [r.name for r in self.anti_affinity]

    def to_dict(self) -> dict[str, Any]:
        return {"host_affinity": [asdict(r) for r in self.host_affinity],
                "anti_affinity": [asdict(r) for r in self.anti_affinity]}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "rules") -> Rules:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise InvalidSpec(where, raw, "an object with host_affinity and anti_affinity")
        ha, aa = [], []
        for i, r in enumerate(_list(raw, "host_affinity", where)):
            f = f"{where}.host_affinity[{i}]"
            kind = _get(r, "kind", f, "must")
            if kind not in AFFINITY_KINDS:
                raise InvalidSpec(f"{f}.kind", kind, "must or should")
            ha.append(VmHostAffinity(_name(r, f), _names(r, "vms", f), _names(r, "hosts", f),
                                     kind))
        for i, r in enumerate(_list(raw, "anti_affinity", where)):
            f = f"{where}.anti_affinity[{i}]"
            vms = _names(r, "vms", f)
            if len(vms) < 2:
                raise InvalidSpec(f"{f}.vms", list(vms), "at least two VM names")
            aa.append(AntiAffinityGroup(_name(r, f), vms))
        rules = cls(tuple(ha), tuple(aa))
        seen: set[str] = set()
        for n in rules.names():
            if n in seen:
                raise InvalidSpec(f"{where}.name", n, "a name no other rule has")
            seen.add(n)
        return rules


@dataclass(frozen=True)
class Problem:
    """One planning input: the cluster now, its rules, the thresholds and the cost."""

    hosts: tuple[Host, ...]
    vms: tuple[Vm, ...]
    rules: Rules = Rules()
    thresholds: Thresholds = Thresholds()
    # Cost of a plan = MiB of memory moved + this per migration: a move is never free,
    # so of two plans moving the same memory the one with fewer migrations wins.
    move_penalty_mib: int = 1024

    def __post_init__(self) -> None:
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise InvalidSpec("hosts.name", names, "unique host names")
        vnames = [v.name for v in self.vms]
        if len(set(vnames)) != len(vnames):
            dup = sorted({n for n in vnames if vnames.count(n) > 1})
            raise InvalidSpec("vms.name", dup, "unique VM names")
        known = set(names)
        for v in self.vms:
            if v.host not in known:
                raise InvalidSpec(f"vms[{v.name}].host", v.host, f"one of {sorted(known)}")
        # Rules may name VMs that are not running (they are simply not in ``vms``) and
        # hosts that are gone (``host remove`` after ``ads rules add``): those hosts are
        # ignored (see live_rules) and reported by rule_warnings, so that a stale rule
        # never stops placement or planning. `ads rules add` refuses unknown hosts.
        if self.move_penalty_mib < 0:
            raise InvalidSpec("move_penalty_mib", self.move_penalty_mib, "0 or more")

    def live_rules(self) -> Rules:
        """The rules with hosts that no longer exist left out; a host-affinity rule
        whose hosts are all gone is left out entirely (it can place its VMs nowhere)."""
        known = {h.name for h in self.hosts}
        kept = []
        for r in self.rules.host_affinity:
            hosts = tuple(h for h in r.hosts if h in known)
            if hosts:
                kept.append(r if hosts == r.hosts else replace(r, hosts=hosts))
        return Rules(tuple(kept), self.rules.anti_affinity)

    def rule_warnings(self) -> tuple[str, ...]:
        """One line per rule naming hosts that are not in the cluster (ignored)."""
        out = []
        for name, gone in stale_rule_hosts(self.rules, {h.name for h in self.hosts}).items():
            r = next(x for x in self.rules.host_affinity if x.name == name)
            what = ("the rule is ignored" if len(gone) == len(r.hosts)
                    else "those hosts are ignored")
            out.append(f"ADS rule {name} names host(s) no longer in the cluster: "
                       f"{', '.join(gone)}; {what} (`ahvlite ads rules remove {name}`)")
        return tuple(out)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise InvalidSpec("host", name, f"one of {[h.name for h in self.hosts]}")

    def with_vms(self, vms: tuple[Vm, ...]) -> Problem:
        return replace(self, vms=vms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hosts": [{**asdict(h), "storage_cpu_history_pct": list(h.storage_cpu_history_pct)}
                      for h in self.hosts],
            "vms": [{**asdict(v), "labels": dict(v.labels),
                     "cpu_history_pct": list(v.cpu_history_pct),
                     "storage_history_pct": list(v.storage_history_pct)} for v in self.vms],
            "rules": self.rules.to_dict(),
            "thresholds": asdict(self.thresholds),
            "move_penalty_mib": self.move_penalty_mib,
        }

    @classmethod
    def from_dict(cls, raw: Any) -> Problem:
        """A snapshot (JSON object) -> Problem; InvalidSpec names the bad field."""
        if not isinstance(raw, Mapping):
            raise InvalidSpec("snapshot", type(raw).__name__, "a JSON object with hosts and vms")
        hosts = []
        for i, h in enumerate(_list(raw, "hosts", "snapshot")):
            f = f"hosts[{i}]"
            hosts.append(Host(
                name=_name(h, f), cpu_capacity_pct=_num(h, "cpu_capacity_pct", f, lo=1),
                memory_mib=int(_num(h, "memory_mib", f, lo=1)),
                storage_cpu_alloc_pct=_num(h, "storage_cpu_alloc_pct", f, 0.0),
                storage_cpu_history_pct=_series(h, "storage_cpu_history_pct", f),
                schedulable=_bool(h, "schedulable", f, True)))
        vms = []
        for i, v in enumerate(_list(raw, "vms", "snapshot")):
            f = f"vms[{i}]"
            labels = _get(v, "labels", f, {})
            if not isinstance(labels, Mapping) or not all(
                    isinstance(k, str) and isinstance(x, str) for k, x in labels.items()):
                raise InvalidSpec(f"{f}.labels", labels, "an object of string to string")
            host = _get(v, "host", f)
            if not isinstance(host, str):
                raise InvalidSpec(f"{f}.host", host, "a host name")
            vms.append(Vm(name=_name(v, f), host=host,
                          memory_mib=int(_num(v, "memory_mib", f, lo=0)),
                          cpu_history_pct=_series(v, "cpu_history_pct", f),
                          storage_history_pct=_series(v, "storage_history_pct", f),
                          pinned=_bool(v, "pinned", f, False), labels=dict(labels)))
        th = _get(raw, "thresholds", "snapshot", {})
        if not isinstance(th, Mapping):
            raise InvalidSpec("thresholds", th, "an object with cpu_pct and storage_pct")
        thresholds = Thresholds(_num(th, "cpu_pct", "thresholds", 85.0, lo=1, hi=100),
                                _num(th, "storage_pct", "thresholds", 85.0, lo=1, hi=100))
        return cls(tuple(hosts), tuple(vms), Rules.from_dict(raw.get("rules")), thresholds,
                   int(_num(raw, "move_penalty_mib", "snapshot", 1024, lo=0)))


def stale_rule_hosts(rules: Rules, known: set[str]) -> dict[str, tuple[str, ...]]:
    """Host-affinity rule name -> the hosts it names that are not in ``known``."""
    out = {}
    for r in rules.host_affinity:
        gone = tuple(h for h in r.hosts if h not in known)
        if gone:
            out[r.name] = gone
    return out


# -- field readers: every refusal names the field, the value and what is allowed -------

_MISSING = object()


def _get(raw: Any, key: str, where: str, default: Any = _MISSING) -> Any:
    if not isinstance(raw, Mapping):
        raise InvalidSpec(where, raw, "an object")
    if key not in raw:
        if default is _MISSING:
            raise InvalidSpec(f"{where}.{key}", None, "a value (the field is required)")
        return default
    return raw[key]


def _list(raw: Any, key: str, where: str) -> list[Any]:
    value = _get(raw, key, where, [])
    if not isinstance(value, list):
        raise InvalidSpec(f"{where}.{key}", value, "a list")
    return value


def _name(raw: Any, where: str) -> str:
    value = _get(raw, "name", where)
    if not isinstance(value, str) or not value:
        raise InvalidSpec(f"{where}.name", value, "a non-empty string")
    return value


def _names(raw: Any, key: str, where: str) -> tuple[str, ...]:
    value = _get(raw, key, where)
    if not isinstance(value, list | tuple) or not value or not all(
            isinstance(x, str) and x for x in value):
        raise InvalidSpec(f"{where}.{key}", value, "a non-empty list of names")
    return tuple(value)


def _num(raw: Any, key: str, where: str, default: Any = _MISSING, *, lo: float = 0,
         hi: float = float("inf")) -> float:
    value = _get(raw, key, where, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        allowed = f"a number from {lo:g}" + ("" if hi == float("inf") else f" to {hi:g}")
        raise InvalidSpec(f"{where}.{key}", value, allowed)
    return float(value)


def _bool(raw: Any, key: str, where: str, default: bool) -> bool:
    value = _get(raw, key, where, default)
    if not isinstance(value, bool):
        raise InvalidSpec(f"{where}.{key}", value, "true or false")
    return value


def _series(raw: Any, key: str, where: str) -> tuple[float, ...]:
    value = _get(raw, key, where, [])
    if not isinstance(value, list | tuple) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) and x >= 0 for x in value):
        raise InvalidSpec(f"{where}.{key}", value, "a list of numbers >= 0 (oldest first)")
    return tuple(float(x) for x in value)
