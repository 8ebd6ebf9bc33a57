"""The leader's memory of each VM (``ha/vms/NAME``) and of each host agent
(``agents/HOST``), as kept in the coordination store.

A VM record names the host that owns the VM now, the VM's *epoch* (bumped each time HA
restarts it elsewhere; the epoch travels in the domain's metadata, so a stale copy is
recognisable anywhere), the VM's spec (what a restart renders through the designer on
the new host; raw domain XML from the store is never defined) and, while a restart is
under way, the *intent*: where it is being started. Records are written by compare-
and-set: the leader's intent and a host agent's restore of the same VM cannot both win.

Everything read from the store is decoded defensively: a record that does not decode
raises :class:`BadRecord` with the reason, which callers log and skip.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ahvlite.controller.ha.lease import Beat
from ahvlite.sched.restart import VmRecord

PREFIX = "ha/vms"
STATUS_KEY = "ha/status"
AGENTS = "agents"


class BadRecord(ValueError):
    """A store document that does not decode; the message says why."""


def _obj(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRecord(f"{what}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BadRecord(f"{what}: not a JSON object")
    return doc


def _typed(doc: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str,
           default: Any = ...) -> Any:
    if name not in doc:
        if default is ...:
            raise BadRecord(f"{what}: missing {name}")
        return default
    value = doc[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise BadRecord(f"{what}: {name} has the wrong type ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class Intent:
    """A restart under way: start the VM as ``epoch`` on ``target`` (moved from
    ``source``). Written through the fence before anything starts; whoever finishes it
    (this leader or the next) starts the VM on ``target`` only."""

    target: str
    source: str
    epoch: int
    at: float  # Unix time, for people
    token: int  # the leader's fencing token when it was written


@dataclass(frozen=True)
class StoredVm:
    name: str
    uuid: str
    host: str  # the owner: where the VM runs, or ran last
    memory_mib: int
    running: bool
    labels: dict[str, str]
    has_pci_hostdev: bool
    spec: dict[str, Any] | None = None  # the VM as the designer renders it
    nvram_volume: str | None = None
    epoch: int = 0
    intent: Intent | None = None
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
        what = "HA record"
        d = _obj(raw, what)
        intent = d.get("intent")
        if intent is not None:
            if not isinstance(intent, dict):
                raise BadRecord(f"{what}: intent is not an object")
            intent = Intent(_typed(intent, "target", str, what), _typed(intent, "source", str,
                                                                        what),
                            _typed(intent, "epoch", int, what),
                            float(_typed(intent, "at", (int, float), what, 0.0)),
                            _typed(intent, "token", int, what, 0))
        labels = _typed(d, "labels", dict, what, {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise BadRecord(f"{what}: labels must map strings to strings")
        spec = _typed(d, "spec", (dict, type(None)), what, None)
        nvram = _typed(d, "nvram_volume", (str, type(None)), what, None)
        came = _typed(d, "restarted_from", list, what, [])
        if not all(isinstance(h, str) for h in came):
            raise BadRecord(f"{what}: restarted_from must list host names")
        return cls(name=_typed(d, "name", str, what), uuid=_typed(d, "uuid", str, what),
                   host=_typed(d, "host", str, what),
                   memory_mib=_typed(d, "memory_mib", int, what),
                   running=_typed(d, "running", bool, what), labels=labels,
                   has_pci_hostdev=_typed(d, "has_pci_hostdev", bool, what, False),
                   spec=spec, nvram_volume=nvram, epoch=_typed(d, "epoch", int, what, 0),
                   intent=intent, restarted_from=tuple(came))

    def with_intent(self, intent: Intent) -> StoredVm:
        return replace(self, intent=intent, epoch=intent.epoch)

    def moved_to(self, host: str, epoch: int) -> StoredVm:
        came = self.restarted_from
        if (self.intent is not None and self.intent.target == host
                and self.intent.source != host):
            came = tuple(dict.fromkeys([*came, self.intent.source]))
        return replace(self, host=host, running=True, epoch=epoch, intent=None,
                       restarted_from=came)


def key(name: str) -> str:
    return f"{PREFIX}/{name}"


def agent_key(host: str) -> str:
    return f"{AGENTS}/{host}"


@dataclass(frozen=True)
class AgentDoc:
    """What a host agent publishes with every heartbeat."""

    host: str
    seq: int
    lease_s: float
    watchdog_s: float
    heartbeat_s: float
    pid: int = 0
    armed: bool = False  # its watchdog is armed (protected VMs run, or ran)
    fenced: tuple[dict[str, Any], ...] = ()  # its last fences: vm, at (Unix time), ok
    pending: tuple[str, ...] = ()  # VMs it fenced and will start again if nobody moved

    def to_bytes(self) -> bytes:
        d = asdict(self)
        d["fenced"], d["pending"] = list(self.fenced), list(self.pending)
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> AgentDoc:
        what = "agent heartbeat"
        d = _obj(raw, what)
        fenced = _typed(d, "fenced", list, what, [])
        return cls(host=_typed(d, "host", str, what), seq=_typed(d, "seq", int, what),
                   lease_s=float(_typed(d, "lease_s", (int, float), what)),
                   watchdog_s=float(_typed(d, "watchdog_s", (int, float), what)),
                   heartbeat_s=float(_typed(d, "heartbeat_s", (int, float), what)),
                   pid=_typed(d, "pid", int, what, 0), armed=_typed(d, "armed", bool, what,
                                                                    False),
                   fenced=tuple(f for f in fenced if isinstance(f, dict)),
                   pending=tuple(p for p in _typed(d, "pending", list, what, [])
                                 if isinstance(p, str)))

    def beat(self, version: int) -> Beat:
        return Beat(version, self.lease_s, self.watchdog_s)
