"""The controller's background loops: one step every period, on a thread of its own.

HA, ADS, the stats feed, the host monitor and each of the host agent's duties run this
way. What a step raises is logged and the next period tries again: a bug or a surprise
must not end HA or fencing for the rest of a term (the agent's watchdog is the backstop
when a step keeps failing).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ahvlite.clock import SYSTEM, Clock
from ahvlite.errors import AhvliteError

log = logging.getLogger(__name__)


class Periodic:
    """``step`` every ``period_s`` until :meth:`stop` (or ``stop`` is set elsewhere:
    several loops of one object may share it)."""

    def __init__(self, name: str, step: Callable[[], object], period_s: float, *,
                 clock: Clock = SYSTEM, stop: threading.Event | None = None) -> None:
        self.name = name
        self.step = step
        self.period_s = period_s
        self.clock = clock
        self.stopped = stop if stop is not None else threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True, name=self.name)
        self.thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.step()
            except AhvliteError as exc:
                log.warning("%s: %s", self.name, exc.message)
            except Exception:
                log.exception("%s: step failed; trying again in %g s", self.name,
                              self.period_s)
            self.clock.wait(self.stopped, self.period_s)
