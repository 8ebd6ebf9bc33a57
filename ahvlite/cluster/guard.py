"""A step's guard: called before every change on a host, it raises to stop the work
(a task's leadership check: a deposed leader must not act). Operations run outside a
task pass none."""

from __future__ import annotations

from collections.abc import Callable

Guard = Callable[[], object]


def no_guard() -> None:
    pass


def still(guard: Guard) -> bool:
    """Whether ``guard`` lets us go on: an undo only runs while we still may act."""
    try:
        guard()
    except BaseException:
        return False
    return True
