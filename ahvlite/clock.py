"""Time and waiting, injected: the one clock interface and the one polling helper.

Code that measures time or waits takes a :class:`Clock` (default :data:`SYSTEM`), so a
unit test drives it with :class:`FakeClock` instead of sleeping. Durations, deadlines
and leases use :meth:`Clock.monotonic` (it never jumps with NTP or an admin's
``date``: HA fencing rests on that, see docs/ha.md); :meth:`Clock.time` is wall time,
only for what is stored or shown (task timestamps, store expiry other processes read).

:func:`wait_until` is every "poll until true or time is up" loop, on tenacity.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import tenacity

from ahvlite.errors import OperationTimeout

T = TypeVar("T")


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: for durations and deadlines."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch: for timestamps others read."""
        ...

    def sleep(self, seconds: float) -> None: ...

    def wait(self, event: threading.Event, seconds: float | None) -> bool:
        """Sleep until ``event`` is set or ``seconds`` passed; whether it is set."""
        ...


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float | None) -> bool:
        return event.wait(seconds)


SYSTEM: Clock = SystemClock()


class FakeClock:
    """A clock for unit tests: time moves only by :meth:`advance`, :meth:`sleep` and
    :meth:`wait` (which returns at once, as if the time had passed). ``wall`` is what
    :meth:`time` reads when ``monotonic`` reads 0."""

    def __init__(self, now: float = 0.0, *, wall: float | None = None) -> None:
        self.now = now
        self.wall_offset = 0.0 if wall is None else wall - now
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self.wall_offset

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def wait(self, event: threading.Event, seconds: float | None) -> bool:
        if not event.is_set() and seconds is not None:
            self.sleep(seconds)
        return event.is_set()


def wait_until(check: Callable[[], T], *, timeout_s: float, interval_s: float,
               clock: Clock = SYSTEM, done: Callable[[T], object] = bool,
               retry_on: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``check`` until ``done`` says yes to what it returned (by default: until it
    returns something true), and return that; sleep ``interval_s`` between calls. Once
    ``timeout_s`` has passed (monotonic), return the last result, or raise again the
    last exception of a ``retry_on`` type (other exceptions end the wait at once).
    ``check`` always runs at least once."""
    deadline = clock.monotonic() + timeout_s
    retry: tenacity.retry_base = tenacity.retry_if_result(lambda r: not done(r))
    if retry_on:
        retry = retry | tenacity.retry_if_exception_type(retry_on)
    retrying = tenacity.Retrying(
        sleep=clock.sleep,
        stop=lambda _state: clock.monotonic() >= deadline,
        wait=tenacity.wait_fixed(interval_s),
        retry=retry,
        retry_error_callback=_last_outcome,
    )
    return retrying(check)


def _last_outcome(state: tenacity.RetryCallState) -> object:
    assert state.outcome is not None
    return state.outcome.result()  # the last result, or its exception raised again


@contextmanager
def file_lock(path: Path, timeout_s: float | None, *, what: str, interval_s: float = 0.05,
              clock: Clock = SYSTEM) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (made 0600 if missing) for the block; wait
    for it at most ``timeout_s`` (None: as long as it takes), then OperationTimeout
    naming ``what``. Closing the file drops the lock, also when the process dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def take() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    try:
        if timeout_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        elif not wait_until(take, timeout_s=timeout_s, interval_s=interval_s, clock=clock):
            raise OperationTimeout(f"{what}: still held after {timeout_s} s")
        yield
    finally:
        os.close(fd)
