"""The controller's background loops keep going whatever a step raises, and end when
their stop event is set (by stop(), or by a sibling loop sharing it)."""

from __future__ import annotations

import threading

from ahvlite.controller.periodic import Periodic
from ahvlite.errors import OperationFailed
from tests.waiting import wait_for


def test_a_step_that_raises_is_tried_again_next_period(caplog) -> None:
    calls: list[int] = []

    def step() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OperationFailed("store away")
        if len(calls) == 2:
            raise KeyError("a bug")

    loop = Periodic("t", step, 0.01)
    loop.start()
    try:
        assert wait_for(lambda: len(calls) >= 4, 5, 0.01)
    finally:
        loop.stop()
    assert loop.thread is not None and not loop.thread.is_alive()
    assert "t: store away" in caplog.text and "t: step failed" in caplog.text


def test_loops_sharing_a_stop_event_end_together() -> None:
    stop = threading.Event()
    a = Periodic("a", lambda: None, 0.01, stop=stop)
    b = Periodic("b", lambda: None, 0.01, stop=stop)
    a.start()
    b.start()
    a.stop()
    assert b.thread is not None
    b.thread.join(timeout=5)
    assert not b.thread.is_alive()
