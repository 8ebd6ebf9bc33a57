"""The two clocks fencing rests on (pure; every time is passed in, from one host's
monotonic clock).

:class:`AgentLease` is the host agent's side: until when this host may keep its
protected VMs running. :class:`FenceClock` is the leader's side: whether a host's
heartbeat has stood still long enough that its VMs are surely off. docs/ha.md proves
that the first always ends before the second says yes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class AgentLease:
    """Keep VMs until ``lease_s`` after the send time of the last heartbeat the store
    acknowledged, or after the last moment a majority of store members said they were
    electing (no quorum then: nobody can act against us until the election ends)."""

    def __init__(self, lease_s: float, keep_until: float = -math.inf) -> None:
        self.lease_s = lease_s
        self.keep_until = keep_until

    def acknowledged(self, sent_at: float) -> None:
        """A heartbeat sent at ``sent_at`` was committed by the store's quorum."""
        self.keep_until = max(self.keep_until, sent_at + self.lease_s)

    def election_seen(self, asked_at: float) -> None:
        """A majority of members answered "not serving" to a probe sent at ``asked_at``."""
        self.keep_until = max(self.keep_until, asked_at + self.lease_s)

    def holds(self, now: float) -> bool:
        return now < self.keep_until


@dataclass(frozen=True)
class Beat:
    """A host agent's heartbeat as the leader reads it: the key's version and the
    timings the agent runs with (its own, published with every beat)."""

    version: int
    lease_s: float
    watchdog_s: float


@dataclass(frozen=True)
class HostClock:
    version: int
    since: float  # when the leader first saw this version (or last started over)
    lease_s: float
    watchdog_s: float


class FenceClock:
    """The leader's timing of every host agent's heartbeat.

    A host is *fenced* once its heartbeat version has stood still for the agent's own
    ``lease_s + watchdog_s`` plus ``margin_s``, counted from when this leader first saw
    that version. Every interruption of the leader's own store connection starts every
    host over (:meth:`restart`): a store election may have let agents stretch their
    leases while it ran.
    """

    def __init__(self, margin_s: float) -> None:
        self.margin_s = margin_s
        self._hosts: dict[str, HostClock] = {}
        self._floor = -math.inf

    def restart(self, now: float) -> None:
        self._floor = now
        self._hosts = {h: HostClock(c.version, now, c.lease_s, c.watchdog_s)
                       for h, c in self._hosts.items()}

    def observe(self, now: float, host: str, beat: Beat | None) -> None:
        if beat is None:
            self._hosts.pop(host, None)
            return
        known = self._hosts.get(host)
        if known is None or known.version != beat.version:
            self._hosts[host] = HostClock(beat.version, max(now, self._floor), beat.lease_s,
                                          beat.watchdog_s)

    def forget(self, host: str) -> None:
        """Start ``host`` over (a check of its version failed: we read a stale one)."""
        self._hosts.pop(host, None)

    def version(self, host: str) -> int | None:
        c = self._hosts.get(host)
        return None if c is None else c.version

    def still_s(self, now: float, host: str) -> float:
        """How long the host's heartbeat has stood still (0 if unknown)."""
        c = self._hosts.get(host)
        return 0.0 if c is None else max(now - c.since, 0.0)

    def remaining_s(self, now: float, host: str) -> float:
        """Until the host counts as fenced (inf while we have no heartbeat of it)."""
        c = self._hosts.get(host)
        if c is None:
            return math.inf
        return max(c.since + c.lease_s + c.watchdog_s + self.margin_s - now, 0.0)

    def fenced(self, now: float, host: str) -> bool:
        return self.remaining_s(now, host) == 0.0

    def lease_over(self, now: float, host: str) -> bool:
        """The agent's lease has surely ended (its watchdog may not have fired yet):
        its VMs may be powered off through libvirt, then restarted elsewhere."""
        c = self._hosts.get(host)
        return c is not None and now - c.since >= c.lease_s + self.margin_s

    def fresh(self, now: float, host: str) -> bool:
        """The heartbeat moved within the agent's lease: the agent holds its lease."""
        c = self._hosts.get(host)
        return c is not None and now - c.since < c.lease_s
