"""Waiting in the benches: the project's one polling helper, raising when it gives up."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ahvlite.clock import wait_until

T = TypeVar("T")


def until(pred: Callable[[], T], timeout_s: float, what: str, *, interval_s: float = 0.5) -> T:
    """``pred``'s first true result within ``timeout_s``; TimeoutError(``what``) if none."""
    value = wait_until(pred, timeout_s=timeout_s, interval_s=interval_s)
    if not value:
        raise TimeoutError(what)
    return value
