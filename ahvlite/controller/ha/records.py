"""The leader's memory of each VM (``ha/vms/NAME`` in the coordination store).

The definition a host last reported is what a restart defines elsewhere, so it must
outlive the host and the leader: it is kept in the store, written through the fence.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ahvlite.controller.ha.restart import VmRecord

PREFIX = "ha/vms"
STATUS_KEY = "ha/status"


@dataclass(frozen=True)
class StoredVm:
    name: str
    uuid: str
    host: str
    memory_mib: int
    running: bool
    labels: dict[str, str]
    has_pci_hostdev: bool
    xml: str
    restarted_from: tuple[str, ...] = field(default=())  # hosts HA moved it away from

    def record(self) -> VmRecord:
        return VmRecord(self.name, self.host, self.memory_mib, self.running, self.labels,
                        self.has_pci_hostdev)

    def to_bytes(self) -> bytes:
        d = asdict(self)
        d["restarted_from"] = list(self.restarted_from)
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> StoredVm:
        d: dict[str, Any] = json.loads(raw)
        d["restarted_from"] = tuple(d.get("restarted_from", ()))
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def moved_to(self, host: str) -> StoredVm:
        return replace(self, host=host, running=True,
                       restarted_from=tuple(dict.fromkeys([*self.restarted_from, self.host])))


def key(name: str) -> str:
    return f"{PREFIX}/{name}"
