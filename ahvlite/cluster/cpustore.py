"""Where the cluster CPU level is kept (like AHV's processor compatibility level).

Cluster state behind :class:`CpuLevelStore`; today a JSON file next to the cluster
file, later the controller store. Separate from :mod:`ahvlite.cluster.cpulevel` (which
computes levels over the hosts) so the VM layer can read the level without a cycle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.virt.cpu import CpuDef

LEVEL_FILE = "cluster-cpu.json"


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


class FileCpuLevelStore:
    """The level as JSON next to the cluster file, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> CpuLevel | None:
        try:
            return CpuLevel.from_dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidSpec("cluster CPU level", str(self.path),
                              f"a JSON object with model and features ({exc!r})",
                              hint="`ahvlite cluster cpu apply` writes it anew") from None

    def save(self, level: CpuLevel) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(level.to_dict(), indent=2) + "\n")
        os.replace(tmp, self.path)


def store_for(cluster_file: Path) -> FileCpuLevelStore:
    return FileCpuLevelStore(cluster_file.with_name(LEVEL_FILE))



def level_of(cluster: ClusterSpec) -> CpuDef | None:
    """The stored level of a cluster loaded from a file (None if none is stored, or the
    spec was not loaded from a file): every VM the VM layer defines gets it."""
    if cluster.source is None:
        return None
    level = store_for(cluster.source).load()
    return level.cpu if level else None
