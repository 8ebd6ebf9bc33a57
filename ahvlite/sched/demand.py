"""Demand estimate from a history of samples, so that one spike does not move a VM.

Method: an exponentially weighted moving average (EWMA, weight ``alpha`` on the new
sample) runs over the window, oldest sample first, and the estimate is a high
percentile (``percentile``, nearest-rank) of that smoothed series.

Why both: the EWMA spreads a lone spike over the following samples at a fraction
``alpha`` of its height, decaying geometrically, so the smoothed series only briefly
and partly rises; the percentile then ignores those few elevated points. A load that
stays up (more than about ``100 - percentile`` % of the window) lifts most of the
smoothed series and so the estimate: sustained contention is seen, a blip is not.
The percentile rather than the mean keeps the estimate near the *high* side of a
steady, noisy load, which is what a host must have room for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ALPHA = 0.3
PERCENTILE = 90.0


def ewma(samples: Sequence[float], alpha: float = ALPHA) -> list[float]:
    out: list[float] = []
    level: float | None = None
    for x in samples:
        level = x if level is None else alpha * x + (1 - alpha) * level
        out.append(level)
    return out


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def estimate(samples: Sequence[float], *, alpha: float = ALPHA,
             pct: float = PERCENTILE) -> float:
    """The demand to plan for: ``pct``-th percentile of the EWMA of ``samples``."""
    return percentile(ewma(samples, alpha), pct)
