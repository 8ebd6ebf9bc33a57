"""Reconnect delays: exponential backoff with jitter (pure; the random source is injected).

Jitter spreads reconnects of many clients after a shared outage, so a restarted host
is not hit by all of them in the same instant.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.2  # each delay is scaled by a factor in [1 - jitter, 1 + jitter]

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless sequence of delays: initial, growing by ``factor``, capped."""
        rng = rng or random.Random()
        base = self.initial_s
        while True:
            yield max(0.0, base * rng.uniform(1 - self.jitter, 1 + self.jitter))
            base = min(self.max_s, base * self.factor)
