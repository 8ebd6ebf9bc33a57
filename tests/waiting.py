"""Polling for tests that wait on real daemons (no fixed sleeps)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(pred: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.05) -> T:
    """Poll ``pred`` until it returns something truthy; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval_s)
    return pred()
