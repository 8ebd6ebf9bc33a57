"""Stats where they arise: every controller samples its own host's libvirt and
publishes ``stats/HOST``; the leader reads those records back instead of polling
every host (like AHV, where each CVM's stats collector reports its own host).

:class:`OwnStats` runs in every controller, leader or not, and publishes only while
its name is a host of the cluster (a controller's member name is its host's name).
:class:`StatsFeed` is the leader's: it keeps a history of the records it reads (ADS
plans on it) and gives the newest one per host (the host monitor's VM cache). A
record is untrusted: one that does not parse, or names another host than its key,
is left out; one older than ``max_age_s`` counts as none (its controller is gone).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ahvlite.clock import SYSTEM
from ahvlite.controller.coord.api import Coordinator
from ahvlite.controller.periodic import Periodic
from ahvlite.errors import AhvliteError, OperationTimeout
from ahvlite.sched.snapshot import records_of
from ahvlite.sched.stats import History, HostStats, host_stats, parse_host_stats
from ahvlite.virt.stats import HostCounters, sample_host

log = logging.getLogger(__name__)

PREFIX = "stats"


def stats_key(host: str) -> str:
    return f"{PREFIX}/{host}"


class OwnStats:
    """Sample this controller's host every ``interval_s`` and publish ``stats/HOST``.

    ``connect`` opens the local libvirt; each call runs on one worker thread with a
    time limit (a libvirtd that hangs must not stop the loop, and a second call on a
    connection stuck in one is never made: the connection is abandoned instead).
    """

    def __init__(self, coord: Coordinator, host: str, connect: Callable[[], Any], *,
                 interval_s: float = 10.0, is_host: Callable[[str], bool] = lambda _h: True,
                 clock: Callable[[], float] = SYSTEM.time,
                 sampler: Callable[[Any], HostCounters] = sample_host,
                 call_timeout_s: float = 10.0) -> None:
        self.coord = coord
        self.host = host
        self.connect = connect
        self.interval_s = interval_s
        self.is_host = is_host
        self.clock = clock
        self.sampler = sampler
        self.call_timeout_s = call_timeout_s
        self.published = 0  # records written (for tests and logs)
        self._conn: Any = None
        self._prev: HostCounters | None = None
        self._pending: Future[Any] | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"stats-{host}")
        self._said_not_host = False
        self.loop: Periodic | None = None

    def start(self) -> None:
        self.loop = Periodic("own-stats", self.collect_once, self.interval_s)
        self.loop.start()

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.stop(timeout_s=5)
        self._worker.shutdown(wait=False, cancel_futures=True)
        if self._conn is not None and (self._pending is None or self._pending.done()):
            from ahvlite.virt.conn import close_quietly

            close_quietly(self._conn)
        self._conn = None

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pending is not None and not self._pending.done():
            raise OperationTimeout(f"host {self.host}: an earlier libvirt call has not "
                                   "returned")
        future = self._pending = self._worker.submit(fn, *args)
        try:
            return future.result(timeout=self.call_timeout_s)
        except FutureTimeout:
            self._conn = None  # stuck in that call: abandoned, never closed under it
            raise OperationTimeout(f"host {self.host}: libvirt did not answer in "
                                   f"{self.call_timeout_s:g} s") from None

    def collect_once(self) -> bool:
        """One sample, published; False when there was nothing to publish."""
        try:
            known = self.is_host(self.host)
        except AhvliteError as exc:
            log.warning("stats of %s: %s", self.host, exc.message)
            return False
        if not known:
            if not self._said_not_host:
                log.warning("%s is no host of the cluster: its stats are not published",
                            self.host)
                self._said_not_host = True
            return False
        self._said_not_host = False
        try:
            if self._conn is None:
                self._conn = self._call(self.connect)
            counters = self._call(self.sampler, self._conn)
        except AhvliteError as exc:
            log.warning("stats of %s: %s", self.host, exc.message)
            if self._pending is None or self._pending.done():
                conn, self._conn = self._conn, None
                if conn is not None:
                    from ahvlite.virt.conn import close_quietly

                    close_quietly(conn)
            return False
        stats = host_stats(self.host, self._prev, counters, self.clock())
        self._prev = counters
        try:
            self.coord.put(stats_key(self.host), json.dumps(stats.to_dict()).encode())
        except AhvliteError as exc:
            log.warning("publish stats of %s: %s", self.host, exc.message)
            return False
        self.published += 1
        return True


def read_records(coord: Coordinator) -> dict[str, HostStats]:
    """The ``stats/HOST`` records that parse, by host."""
    out = {}
    for name, v in coord.children(PREFIX).items():
        try:
            raw = json.loads(v.value)
        except (ValueError, UnicodeDecodeError):
            continue
        rec = parse_host_stats(raw)
        if rec is not None and rec.host == name:
            out[name] = rec
    return out


class StatsFeed:
    """The leader's history of every host's published stats, read every ``interval_s``."""

    def __init__(self, coord: Coordinator, *, interval_s: float = 10.0, size: int = 360,
                 max_age_s: float = 120.0, clock: Callable[[], float] = SYSTEM.time) -> None:
        self.coord = coord
        self.interval_s = interval_s
        self.max_age_s = max_age_s
        self.clock = clock
        self.history = History(size)
        self._mu = threading.Lock()
        self.loop: Periodic | None = None

    def start(self) -> None:
        self.loop = Periodic("stats-feed", self.refresh, self.interval_s)
        self.loop.start()

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.stop(timeout_s=5)

    def refresh(self) -> int:
        """Take in the records published since the last look; how many were new."""
        now = self.clock()
        new = 0
        for host, rec in sorted(read_records(self.coord).items()):
            with self._mu:
                last = self.history.latest(host)
                if now - rec.at > self.max_age_s or (last is not None and rec.at <= last.at):
                    continue
                self.history.add(rec)
            new += 1
        return new

    def records(self, cluster: Any) -> dict[str, list[dict[str, Any]]]:
        """The history as ADS snapshot records."""
        with self._mu:
            return records_of(self.history, cluster)

    def latest(self, host: str) -> HostStats | None:
        """The newest record of ``host`` while it is younger than ``max_age_s``."""
        with self._mu:
            rec = self.history.latest(host)
        if rec is None or self.clock() - rec.at > self.max_age_s:
            return None
        return rec
