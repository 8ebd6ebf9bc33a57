"""HA settings (cluster state key ``ha``): mode, replication factor, reservation type,
isolation timeout and countdown.

Why the defaults: a host agent that cannot reach the coordination store for
``isolation_timeout_s`` (5 s) powers off its protected VMs. The leader restarts a lost
host's VMs only ``countdown_s`` (8 s) after it saw both signals of the loss, and its
view of the loss starts no earlier than the agent's own last contact with the store. So
a countdown of at least the isolation timeout plus a margin (3 s by default: the agent's
0.5 s check period, a destroy call, a busy scheduler) means the old copy is gone before
a new one starts (the agent's 0.5 s check whether other store members answer fits in
the margin too). A store that is down for everyone is not isolation: the agent fences
only when no other member answers (``agent.py``), because a ZooKeeper leader's power
loss leaves every host without the store for about 6 s with our 500 ms tick. 8 s keeps
failure-to-restart under 25 s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ahvlite.errors import InvalidSpec

STATE_KEY = "ha"
MODES = ("default", "guarantee")
RESERVATIONS = ("host", "segment")
REPLICATION_FACTORS = (2, 3)
DEFAULT_ISOLATION_TIMEOUT_S = 5.0
DEFAULT_COUNTDOWN_S = 8.0
MIN_MARGIN_S = 2.0  # the countdown must exceed the isolation timeout by at least this


@dataclass(frozen=True)
class HaSettings:
    mode: str = "default"
    rf: int = 2
    reservation: str = "segment"
    isolation_timeout_s: float = DEFAULT_ISOLATION_TIMEOUT_S
    countdown_s: float = DEFAULT_COUNTDOWN_S

    @property
    def failures_tolerated(self) -> int:
        """RF2 survives the loss of 1 host, RF3 of 2."""
        return self.rf - 1

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> HaSettings:
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        return validated(cls(**known))

    def with_changes(self, **changes: Any) -> HaSettings:
        values = {**self.to_doc(), **{k: v for k, v in changes.items() if v is not None}}
        return validated(HaSettings(**values))


def validated(s: HaSettings) -> HaSettings:
    """``s`` if every field is allowed, else InvalidSpec naming the field."""
    if s.mode not in MODES:
        raise InvalidSpec("mode", s.mode, " or ".join(MODES))
    if s.rf not in REPLICATION_FACTORS or isinstance(s.rf, bool):
        raise InvalidSpec("rf", s.rf, "2 (tolerates 1 host loss) or 3 (tolerates 2)")
    if s.reservation not in RESERVATIONS:
        raise InvalidSpec("reservation", s.reservation, " or ".join(RESERVATIONS))
    if not isinstance(s.isolation_timeout_s, int | float) or not 1 <= s.isolation_timeout_s <= 300:
        raise InvalidSpec("isolation_timeout_s", s.isolation_timeout_s, "1 to 300 seconds")
    if (not isinstance(s.countdown_s, int | float)
            or s.countdown_s < s.isolation_timeout_s + MIN_MARGIN_S or s.countdown_s > 600):
        raise InvalidSpec("countdown_s", s.countdown_s,
                          f"at least the isolation timeout ({s.isolation_timeout_s:g} s) plus "
                          f"{MIN_MARGIN_S:g} s, at most 600 s",
                          hint="a shorter countdown could restart a VM whose isolated host "
                               "has not powered it off yet")
    return s
