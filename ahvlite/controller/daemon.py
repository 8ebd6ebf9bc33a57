"""The controller process: membership, heartbeat, election, and the leader's work.

Every controller joins as an ephemeral member and stands for leader. The one elected
recovers what an earlier leader left running, then claims queued tasks. Each loop it
writes ``controller/leader`` through the fence: that record is the leader's heartbeat
and the first proof that a new leader acts. Losing the session stops the runner; tasks
in flight fail their next fenced write and are left to the next leader.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ahvlite.clock import SYSTEM, Clock
from ahvlite.controller.coord.api import Coordinator, NotLeader, Put
from ahvlite.controller.tasks import Handler, TaskRunner, TaskStore
from ahvlite.errors import AhvliteError

log = logging.getLogger(__name__)

LEADER_KEY = "controller/leader"
MAX_BACKOFF_S = 5.0  # the longest pause of the loop after repeated failures


class Service(Protocol):
    """Something only the leader runs (the host monitor): started on election."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class Identity:
    name: str
    host: str
    pid: int

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "host": self.host, "pid": self.pid},
                          sort_keys=True)

    @classmethod
    def here(cls, name: str | None = None) -> Identity:
        host = socket.gethostname()
        return cls(name or host, host, os.getpid())


class Controller:
    """One controller; :meth:`run` returns once ``stop`` is set, having left cleanly."""

    def __init__(self, coord: Coordinator, identity: Identity, registry: dict[str, Handler],
                 *, workers: int = 4, heartbeat_s: float = 1.0, poll_s: float = 0.2,
                 clock: Clock = SYSTEM,
                 leader_services: Callable[[], list[Service]] | None = None,
                 api_url: str | None = None) -> None:
        self.coord = coord
        self.api_url = api_url  # where this controller serves the API, if it does
        self.leader_services = leader_services
        self._services: list[Service] = []
        self.identity = identity
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s
        self.store = TaskStore(coord, clock)
        self.runner = TaskRunner(coord, self.store, registry, identity.name, workers=workers)
        self.started_at = clock.time()
        self._elected: int | None = None  # token handed over by the election thread
        self._acting: int | None = None  # token the main loop acts under
        self._wake = threading.Event()
        self._failures = 0  # leader loop rounds in a row that failed: the loop backs off
        self._restart = threading.Event()  # the leader's services must start anew

    def _member_data(self) -> bytes:
        data = {"name": self.identity.name, "host": self.identity.host,
                "pid": self.identity.pid, "started_at": self.started_at,
                "heartbeat_at": self.clock.time(), "leader": self._acting is not None}
        if self.api_url is not None:
            data["api"] = self.api_url
        return json.dumps(data).encode()

    def restart_services(self) -> None:
        """Start the leader's services anew (the cluster's hosts changed); a no-op
        while we do not lead."""
        self._restart.set()
        self._wake.set()

    def _on_elected(self, token: int) -> None:
        self._elected = token
        self._wake.set()

    def _on_lost(self, reason: str) -> None:
        log.warning("%s: leadership lost (%s)", self.identity.name, reason)
        self._elected = None
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        self.coord.join(self.identity.name, self._member_data())
        self.coord.campaign(self.identity.to_json(), self._on_elected, self._on_lost)
        next_beat = 0.0
        try:
            while not stop.is_set():
                self._tick()
                if self.clock.monotonic() >= next_beat:
                    next_beat = self.clock.monotonic() + self.heartbeat_s
                    try:
                        self.coord.update_member(self.identity.name, self._member_data())
                    except AhvliteError as exc:
                        log.warning("heartbeat: %s", exc.message)
                    except Exception:
                        log.exception("heartbeat")
                self.clock.wait(self._wake, self._pause_s())
                self._wake.clear()
        finally:
            self._step_down()
            try:
                self.coord.resign()
                self.coord.leave(self.identity.name)
            except AhvliteError:
                pass
            self.coord.close()

    def _step_down(self) -> None:
        self._acting = None
        self.runner.stop()
        for svc in self._services:
            try:
                svc.stop()
            except Exception:
                log.exception("stopping %s", svc)
        self._services = []

    def _pause_s(self) -> float:
        """The loop's pause: ``poll_s``, doubling per failed round up to a cap."""
        if not self._failures:
            return self.poll_s
        return min(MAX_BACKOFF_S, self.poll_s * 2 ** min(self._failures, 16))

    def _tick(self) -> None:
        """One round of the leader's work. Nothing it meets ends the controller: a
        failure is logged and the loop backs off (a controller that stopped would
        leave the cluster without a leader, and so without HA)."""
        try:
            self._lead()
            self._failures = 0
        except NotLeader:
            self._step_down()
        except AhvliteError as exc:
            self._failures += 1
            log.warning("leader loop: %s (next try in %.1f s)", exc.message, self._pause_s())
        except Exception:
            self._failures += 1
            log.exception("leader loop failed (next try in %.1f s)", self._pause_s())

    def _lead(self) -> None:
        elected = self._elected
        if elected is None or not self.coord.is_leader():
            self._step_down()
            return
        if self._acting != elected:
            # Whatever a start that failed half-way left goes first; the term counts as
            # started only once all of it worked, so a failed start is tried again.
            self._step_down()
            self.runner.start()
            recovered = self.runner.recover(elected)
            if self.leader_services is not None:
                for svc in self.leader_services():
                    svc.start()
                    self._services.append(svc)
            self._acting = elected
            self._restart.clear()
            log.warning("%s leads (token %s); recovered %s", self.identity.name, elected,
                        recovered or "nothing")
        elif self._restart.is_set() and self.leader_services is not None:
            self._restart.clear()
            for svc in self._services:
                svc.stop()
            self._services = []
            for svc in self.leader_services():
                svc.start()
                self._services.append(svc)
            log.warning("%s: leader services restarted around the cluster's hosts",
                        self.identity.name)
        self._announce(elected)
        self.runner.poll(elected)

    def _announce(self, token: int) -> None:
        record: dict[str, Any] = {"name": self.identity.name, "host": self.identity.host,
                                  "pid": self.identity.pid, "token": token,
                                  "acted_at": self.clock.time()}
        if self.api_url is not None:  # clients and followers send uploads here
            record["api"] = self.api_url
        self.coord.fenced([Put(LEADER_KEY, json.dumps(record).encode())])
