"""What a lab has created, recorded before each creation so nothing is ever lost.

``lab down`` removes exactly what this file lists; ``lab up`` reads it to clear the
leftovers of an earlier run that was killed half-way.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ProcessRecord:
    host: str  # lab host name, or "" for the root namespace
    role: str  # ovsdb-server, libvirtd ...
    pid: int
    starttime: int  # /proc/PID/stat field 22: tells a reused PID from ours
    argv: list[str] = field(default_factory=list)  # how to start it again


@dataclass
class LabState:
    name: str
    subnet: str
    hosts: int = 0
    phase: str = "creating"  # creating -> up; down removes the file
    domain_type: str | None = None
    domain_type_reason: str | None = None
    storage: str = "dir"  # dir, or iscsi (tgtd and a redirector on every host)
    bridge: str | None = None
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)  # partition bridges (lab partition)
    mounts: list[str] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    guests: list[dict[str, Any]] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> LabState | None:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            # A state file cut short by a crash: the name-based sweep in lab up still
            # finds everything, so treat it as absent rather than failing.
            return None
        raw["processes"] = [ProcessRecord(**p) for p in raw.get("processes", [])]
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, path)
