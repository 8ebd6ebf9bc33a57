"""Target health as the redirector counts it, where a login goes, and failback. Pure.

Health: every host's target is checked every ``interval_s`` (a NOP-Out on a logged-in
session, see probe.py). A check passes or fails; the streaks of passes and failures
are what the decisions read:

* a login is redirected only to a target whose LAST check passed (never to one that
  failed it, however good it was before), the local target first;
* failback: a remote target ends the sessions of another host's VMs once that host's
  own target has passed ``rise`` checks in a row (in the remote's view), so QEMU logs
  in again through its host's redirector and is sent home. If the same session comes
  back while its home target stayed healthy (a bounce: two redirectors disagree about
  that target), ending it again is held off with a doubling delay; a new failure of
  the home target starts afresh.

Time comes in as plain seconds (the caller's monotonic clock).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ahvlite.storage.names import HEALTH_TARGET, is_volume_target


@dataclass(frozen=True)
class Thresholds:
    interval_s: float = 1.0  # between two checks of one target
    timeout_s: float = 2.0  # a check (login or NOP-Out round trip) that takes longer fails
    rise: int = 3  # passes in a row before a returning target takes its sessions back
    hold_off_s: float = 10.0  # first delay before ending the same session again
    hold_off_max_s: float = 300.0


@dataclass(frozen=True)
class TargetHealth:
    host: str
    portal: str  # ADDRESS:PORT
    checks: int = 0
    ok_streak: int = 0
    fail_streak: int = 0
    last_ok: bool | None = None  # None: never checked
    last_error: str | None = None
    last_check_s: float | None = None
    rtt_ms: float | None = None
    changed_s: float | None = None  # when last_ok last changed

    @property
    def state(self) -> str:
        if self.last_ok is None:
            return "unknown"
        return "healthy" if self.last_ok else "failed"


def record(h: TargetHealth, *, ok: bool, at_s: float, rtt_ms: float | None = None,
           error: str | None = None) -> TargetHealth:
    """``h`` after one more check."""
    changed = h.changed_s if h.last_ok == ok else at_s
    return replace(h, checks=h.checks + 1, ok_streak=h.ok_streak + 1 if ok else 0,
                   fail_streak=0 if ok else h.fail_streak + 1, last_ok=ok,
                   last_error=None if ok else (error or "check failed"),
                   last_check_s=at_s, rtt_ms=rtt_ms if ok else None, changed_s=changed)


def eligible(h: TargetHealth) -> bool:
    """May a login be sent there: its last check passed."""
    return h.last_ok is True


def ranked(targets: Mapping[str, TargetHealth], local: str, *,
           rise: int = Thresholds.rise) -> list[str]:
    """Hosts whose target may take a login, best first: the local one, then remote ones
    that have been healthy longest (streaks count up to ``rise``; beyond that they are
    equally proven), then the quickest to answer, then by name (stable)."""
    ok = [h for h in targets.values() if eligible(h)]

    def key(h: TargetHealth) -> tuple[int, int, float, str]:
        return (0 if h.host == local else 1, -min(h.ok_streak, rise),
                h.rtt_ms if h.rtt_ms is not None else float("inf"), h.host)

    return [h.host for h in sorted(ok, key=key)]


def choose(targets: Mapping[str, TargetHealth], local: str, *,
           rise: int = Thresholds.rise, exclude: Iterable[str] = ()) -> str | None:
    """Where a login goes now (None: no target may take it)."""
    skip = set(exclude)
    return next((h for h in ranked(targets, local, rise=rise) if h not in skip), None)


# -- failback --------------------------------------------------------------------------

@dataclass(frozen=True)
class Session:
    """One initiator's session on a target, as tgtadm lists it."""

    tid: int
    target: str  # the target's IQN
    sid: int  # tgt's I_T nexus number
    cid: int
    initiator: str
    address: str  # the initiator's IP address


@dataclass(frozen=True)
class HoldOff:
    ended: int = 0  # times this session's (host, initiator, target) was ended lately
    last_s: float = 0.0

    def allows(self, now_s: float, th: Thresholds) -> bool:
        if self.ended == 0:
            return True
        delay = min(th.hold_off_s * 2 ** (self.ended - 1), th.hold_off_max_s)
        return now_s - self.last_s >= delay


def session_key(host: str, s: Session) -> str:
    return f"{host} {s.initiator} {s.target}"


@dataclass(frozen=True)
class FailbackPlan:
    end: list[tuple[str, Session]] = field(default_factory=list)  # (home host, session)
    held: list[tuple[str, Session]] = field(default_factory=list)  # due, but held off


def failback(me: str, sessions: Iterable[Session], targets: Mapping[str, TargetHealth],
             host_of: Mapping[str, str], holds: Mapping[str, HoldOff], now_s: float,
             th: Thresholds) -> FailbackPlan:
    """Sessions on MY target that belong home elsewhere and may be ended now.

    ``host_of`` maps an initiator address to the cluster host it belongs to. Sessions
    of unknown addresses, of my own host, on the health target (the other redirectors'
    checks) or on targets that are not VM disks are never touched.
    """
    plan = FailbackPlan()
    for s in sessions:
        if s.target == HEALTH_TARGET or not is_volume_target(s.target):
            continue
        home = host_of.get(s.address)
        if home is None or home == me:
            continue
        h = targets.get(home)
        if h is None or not eligible(h) or h.ok_streak < th.rise:
            continue
        hold = holds.get(session_key(home, s), HoldOff())
        if h.changed_s is not None and h.changed_s > hold.last_s:
            # Home failed and came back since we last sent this session there: that
            # was a real failover, not a bounce, so no hold-off carries over.
            hold = HoldOff()
        if hold.allows(now_s, th):
            plan.end.append((home, s))
        else:
            plan.held.append((home, s))
    return plan


def after_ending(holds: Mapping[str, HoldOff], ended: Iterable[tuple[str, Session]],
                 now_s: float, th: Thresholds,
                 targets: Mapping[str, TargetHealth] | None = None) -> dict[str, HoldOff]:
    """The hold-offs once ``ended`` were ended at ``now_s``; old ones are forgotten."""
    targets = targets or {}
    out = {k: v for k, v in holds.items() if now_s - v.last_s < th.hold_off_max_s * 2}
    for home, s in ended:
        k = session_key(home, s)
        prev = out.get(k, HoldOff())
        back = targets.get(home)
        if back is not None and back.changed_s is not None and back.changed_s > prev.last_s:
            prev = HoldOff()  # a new failover since the last end, not a bounce
        out[k] = HoldOff(ended=prev.ended + 1, last_s=now_s)
    return out
