"""When the leader declares a host down (pure; time is passed in).

Two independent signals must agree: the leader's libvirt connection to the host is
lost AND the host's controller is gone from the coordination store's membership. Either
alone is a network hiccup or a busy process, not a dead host. Once both are lost a
countdown runs (``HaSettings.countdown_s``); if either signal returns before it ends
the host is healthy again. A host declared down stays down until both signals are back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # one signal lost: watched, nothing done
    SUSPECT = "suspect"  # both lost, countdown running
    DOWN = "down"  # countdown over: its VMs restart elsewhere


@dataclass(frozen=True)
class Signals:
    libvirt_connected: bool
    present: bool


@dataclass(frozen=True)
class HostView:
    host: str
    verdict: Verdict
    since: float  # when the current verdict began
    remaining_s: float = 0.0  # of the countdown, while SUSPECT


class DownDetector:
    """Feed it the signals of every host now and then; it keeps the countdowns."""

    def __init__(self, countdown_s: float) -> None:
        self.countdown_s = countdown_s
        self._lost_since: dict[str, float] = {}
        self._down: dict[str, float] = {}
        self._views: dict[str, HostView] = {}

    def update(self, now: float, signals: dict[str, Signals]) -> dict[str, HostView]:
        views = {}
        for host, sig in signals.items():
            views[host] = self._one(now, host, sig)
        self._views = views
        return views

    def _one(self, now: float, host: str, sig: Signals) -> HostView:
        both_lost = not sig.libvirt_connected and not sig.present
        if host in self._down:
            if sig.libvirt_connected and sig.present:
                del self._down[host]
                self._lost_since.pop(host, None)
                return HostView(host, Verdict.HEALTHY, now)
            return HostView(host, Verdict.DOWN, self._down[host])
        if not both_lost:
            self._lost_since.pop(host, None)
            if sig.libvirt_connected and sig.present:
                return HostView(host, Verdict.HEALTHY, self._since(host, Verdict.HEALTHY, now))
            return HostView(host, Verdict.DEGRADED, self._since(host, Verdict.DEGRADED, now))
        start = self._lost_since.setdefault(host, now)
        if now - start >= self.countdown_s:
            self._down[host] = now
            return HostView(host, Verdict.DOWN, now)
        return HostView(host, Verdict.SUSPECT, start, self.countdown_s - (now - start))

    def _since(self, host: str, verdict: Verdict, now: float) -> float:
        prev = self._views.get(host)
        return prev.since if prev is not None and prev.verdict == verdict else now

    def down_hosts(self) -> set[str]:
        return set(self._down)
