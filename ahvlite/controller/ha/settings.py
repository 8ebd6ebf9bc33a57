"""HA settings (cluster state key ``ha``): mode, replication factor, reservation type,
and the timings that fencing rests on.

The timings (the full argument is in docs/ha.md):

* ``heartbeat_s``: how often each host agent writes its heartbeat through the store
  (a quorum write).
* ``lease_s``: an agent keeps its protected VMs running only until ``lease_s`` after
  it *sent* its last heartbeat the store acknowledged (or after it last saw a majority
  of store members electing). The default covers a store election after a member's
  host lost power (measured 5.4-6.0 s with our 500 ms tick, most of it before and after
  the short window in which members say they elect), with 2 s to spare, so an election
  alone makes no agent fence (6 s, without the spare, fenced healthy hosts about every
  other time in the lab).
* ``watchdog_s``: the host's watchdog fires this long after the agent's last feed; the
  agent feeds only while it holds its lease (or has confirmed every protected VM off),
  so a stalled or crash-looping agent gets its host reset.
* ``margin_s``: slack for clock rates and scheduling.

The leader restarts a host's VMs only after that host's heartbeat has stood still for
``lease_s + watchdog_s + margin_s`` on the leader's own clock, counted from when it first
saw that heartbeat and from its own last reconnection to the store. By then the old
copies are off: fenced by the agent, or reset by the watchdog.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ahvlite.errors import InvalidSpec

STATE_KEY = "ha"
MODES = ("default", "guarantee")
RESERVATIONS = ("host", "segment")
REPLICATION_FACTORS = (2, 3)
DEFAULT_HEARTBEAT_S = 0.5
DEFAULT_LEASE_S = 10.0
DEFAULT_WATCHDOG_S = 3.0
DEFAULT_MARGIN_S = 1.0


@dataclass(frozen=True)
class HaSettings:
    mode: str = "default"
    rf: int = 2
    reservation: str = "segment"
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    lease_s: float = DEFAULT_LEASE_S
    watchdog_s: float = DEFAULT_WATCHDOG_S
    margin_s: float = DEFAULT_MARGIN_S

    @property
    def failures_tolerated(self) -> int:
        """RF2 survives the loss of 1 host, RF3 of 2."""
        return self.rf - 1

    @property
    def restart_after_s(self) -> float:
        """How long a host's heartbeat must stand still before its VMs restart."""
        return self.lease_s + self.watchdog_s + self.margin_s

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> HaSettings:
        # Keys of older versions (isolation_timeout_s, countdown_s) are ignored.
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        return validated(cls(**known))

    def with_changes(self, **changes: Any) -> HaSettings:
        values = {**self.to_doc(), **{k: v for k, v in changes.items() if v is not None}}
        return validated(HaSettings(**values))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validated(s: HaSettings) -> HaSettings:
    """``s`` if every field is allowed, else InvalidSpec naming the field."""
    if s.mode not in MODES:
        raise InvalidSpec("mode", s.mode, " or ".join(MODES))
    if s.rf not in REPLICATION_FACTORS or isinstance(s.rf, bool):
        raise InvalidSpec("rf", s.rf, "2 (tolerates 1 host loss) or 3 (tolerates 2)")
    if s.reservation not in RESERVATIONS:
        raise InvalidSpec("reservation", s.reservation, " or ".join(RESERVATIONS))
    if not _number(s.heartbeat_s) or not 0.1 <= s.heartbeat_s <= 10:
        raise InvalidSpec("heartbeat_s", s.heartbeat_s, "0.1 to 10 seconds")
    if not _number(s.lease_s) or not 4 * s.heartbeat_s <= s.lease_s <= 300:
        raise InvalidSpec("lease_s", s.lease_s,
                          f"at least 4 heartbeats ({4 * s.heartbeat_s:g} s), at most 300 s",
                          hint="a lease shorter than a store election fences healthy hosts")
    if not _number(s.watchdog_s) or not 1 <= s.watchdog_s <= 60:
        raise InvalidSpec("watchdog_s", s.watchdog_s, "1 to 60 seconds (whole seconds on "
                          "hardware watchdogs)")
    if not _number(s.margin_s) or not 0.5 <= s.margin_s <= 60:
        raise InvalidSpec("margin_s", s.margin_s, "0.5 to 60 seconds")
    return s
