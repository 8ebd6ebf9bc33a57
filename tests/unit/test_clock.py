"""The injected clock and the one polling helper."""

from __future__ import annotations

import threading

import pytest

from ahvlite.clock import SYSTEM, FakeClock, wait_until


def test_wait_until_returns_the_first_true_result_and_sleeps_between_calls():
    clock, calls = FakeClock(), []

    def check():
        calls.append(clock.now)
        return "up" if len(calls) == 3 else ""

    assert wait_until(check, timeout_s=10, interval_s=0.5, clock=clock) == "up"
    assert calls == [0.0, 0.5, 1.0] and clock.slept == [0.5, 0.5]


def test_wait_until_gives_the_last_result_once_the_time_is_up():
    clock = FakeClock()
    assert wait_until(lambda: None, timeout_s=1, interval_s=0.3, clock=clock) is None
    assert 1.0 <= clock.now < 1.3  # no call after the deadline, no wait past it


def test_wait_until_with_a_done_predicate():
    clock, n = FakeClock(), iter(range(100))
    assert wait_until(lambda: next(n), timeout_s=60, interval_s=1, clock=clock,
                      done=lambda v: v >= 4) == 4


def test_wait_until_raises_again_an_exception_it_retries_and_stops_on_others():
    clock = FakeClock()

    def flaky():
        raise ConnectionError("no")

    with pytest.raises(ConnectionError):
        wait_until(flaky, timeout_s=1, interval_s=0.25, clock=clock,
                   retry_on=(ConnectionError,))
    assert clock.now >= 1
    clock = FakeClock()
    with pytest.raises(KeyError):
        wait_until(lambda: {}["x"], timeout_s=1, interval_s=0.25, clock=clock,
                   retry_on=(ConnectionError,))
    assert clock.now == 0  # not retried


def test_the_fake_clock_keeps_wall_and_monotonic_apart():
    clock = FakeClock(5.0, wall=1_700_000_000.0)
    clock.advance(2)
    assert clock.monotonic() == 7.0 and clock.time() == 1_700_000_002.0
    stop = threading.Event()
    assert clock.wait(stop, 3) is False and clock.monotonic() == 10.0
    stop.set()
    assert clock.wait(stop, 3) is True and clock.monotonic() == 10.0


def test_the_system_clock_waits_on_the_event():
    stop = threading.Event()
    stop.set()
    assert SYSTEM.wait(stop, 5) is True
    assert SYSTEM.monotonic() <= SYSTEM.monotonic()


def test_a_file_lock_held_elsewhere_times_out_naming_it_and_is_free_after(tmp_path) -> None:
    import pytest

    from ahvlite.clock import file_lock
    from ahvlite.errors import OperationTimeout

    path = tmp_path / "x.lock"
    with (file_lock(path, 1.0, what="lock x"),
          pytest.raises(OperationTimeout, match=r"lock x: still held after 0\.1 s"),
          file_lock(path, 0.1, what="lock x")):
        pass
    with file_lock(path, 0.1, what="lock x"):
        assert oct(path.stat().st_mode & 0o777) == "0o600"
