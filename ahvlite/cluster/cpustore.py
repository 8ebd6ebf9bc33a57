"""Where the cluster CPU level is kept (like AHV's processor compatibility level).

Cluster state behind :class:`CpuLevelStore`: the ``cpu`` document of the cluster's
state in the store. Separate from :mod:`ahvlite.cluster.cpulevel` (which
computes levels over the hosts) so the VM layer can read the level without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ahvlite.cluster.state import ClusterState
from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.virt.cpu import CpuDef


@dataclass(frozen=True)
class CpuLevel:
    cpu: CpuDef
    source: str  # baseline | manual
    set_at: float  # Unix time
    name: str | None = None  # what a manual level was asked as (x86-64-v3, Westmere)

    def to_dict(self) -> dict[str, Any]:
        return {**self.cpu.to_dict(), "source": self.source, "set_at": self.set_at,
                "name": self.name}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CpuLevel:
        return cls(CpuDef(model=raw["model"], vendor=raw.get("vendor"),
                          features=tuple(raw.get("features", ())),
                          disabled=tuple(raw.get("disabled", ()))),
                   source=raw.get("source", "baseline"), set_at=float(raw.get("set_at", 0)),
                   name=raw.get("name"))


class CpuLevelStore(Protocol):
    """Where the cluster keeps its CPU level."""

    def load(self) -> CpuLevel | None: ...

    def save(self, level: CpuLevel) -> None: ...


class StateCpuLevelStore:
    """The level as the cluster's ``cpu`` state document."""

    KEY = "cpu"

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def load(self) -> CpuLevel | None:
        return level_from_doc(self.state.get(self.KEY))

    def save(self, level: CpuLevel) -> None:
        self.state.put(self.KEY, level.to_dict())


def level_from_doc(raw: dict[str, Any]) -> CpuLevel | None:
    """The level a ``cpu`` document holds (None for an empty one); InvalidSpec when it
    is not one (a document from the store or a cluster directory is not trusted)."""
    if not raw:
        return None
    try:
        if not isinstance(raw.get("model"), str) or not all(
                isinstance(f, str) for k in ("features", "disabled")
                for f in raw.get(k, ())):
            raise TypeError("model and features must be names")
        return CpuLevel.from_dict(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidSpec("cluster CPU level", "(stored document)",
                          f"a JSON object with model and features ({exc!r})",
                          hint="`ahvlite cluster cpu apply` writes it anew") from None


def store_for(cluster: ClusterSpec) -> StateCpuLevelStore:
    return StateCpuLevelStore(cluster.state)


def level_of(cluster: ClusterSpec) -> CpuDef | None:
    """The cluster's stored level (None if none is stored): every VM the VM layer
    defines gets it."""
    level = store_for(cluster).load()
    return level.cpu if level else None
