"""Persisted tasks: the record, the store operations, and the leader's runner.

A task lives at ``tasks/ID`` as JSON. Anyone may submit (create-only) or ask to
cancel; only the leader moves a task forward, and every such write is fenced, so a
deposed leader can never record progress. Handlers are split into named steps: a
finished step is recorded before the next starts, and a step's body must be idempotent
(it checks before it acts), because a new leader re-runs the one step the old leader
may have done without recording. That is how a VM is created once even if the leader
dies in the middle.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from ahvlite.controller.coord.api import (
    MUST_NOT_EXIST,
    Coordinator,
    NotLeader,
    Put,
    VersionMismatch,
)
from ahvlite.errors import AhvliteError, Conflict, InvalidSpec, NotFound, OperationTimeout

log = logging.getLogger(__name__)

PREFIX = "tasks"
MAX_ATTEMPTS = 3


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED}


@dataclass(frozen=True)
class Task:
    id: str
    kind: str
    params: dict[str, Any]
    state: TaskState = TaskState.QUEUED
    progress_pct: int = 0
    message: str = ""
    owner: str | None = None
    owner_token: int | None = None
    attempts: int = 0
    steps_done: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    submitted_by: str | None = None  # the API principal (cert:CN, token:NAME)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Task:
        d = json.loads(raw)
        d["state"] = TaskState(d["state"])
        return cls(**d)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class TaskCancelled(AhvliteError):
    kind = "cancelled"


class Handler(Protocol):
    """A task kind: ``run`` does the work through ``ctx.step``; resumable if steps allow."""

    resumable: bool

    def validate(self, params: dict[str, Any]) -> dict[str, Any]: ...
    def run(self, ctx: TaskContext) -> dict[str, Any]: ...


def new_task_id(now: float) -> str:
    # Sortable by submission time, unique across submitters.
    return f"{int(now * 1000):013d}-{uuid.uuid4().hex[:8]}"


class TaskStore:
    """Tasks in the coordination store; ``clock`` gives wall-clock seconds."""

    def __init__(self, coord: Coordinator, clock: Callable[[], float]) -> None:
        self.coord = coord
        self.clock = clock

    def key(self, task_id: str) -> str:
        return f"{PREFIX}/{task_id}"

    def submit(self, kind: str, params: dict[str, Any],
               registry: dict[str, Handler] | None = None, *,
               submitted_by: str | None = None) -> Task:
        if registry is not None:
            if kind not in registry:
                raise InvalidSpec("kind", kind, ", ".join(sorted(registry)))
            params = registry[kind].validate(params)
        now = self.clock()
        task = Task(id=new_task_id(now), kind=kind, params=params, created_at=now,
                    submitted_by=submitted_by)
        self.coord.put(self.key(task.id), task.to_json(), MUST_NOT_EXIST)
        return task

    def load(self, task_id: str) -> tuple[Task, int]:
        got = self.coord.get(self.key(task_id))
        if got is None:
            raise NotFound(f"task {task_id} does not exist", hint="see `ahvlite task list`")
        return Task.from_json(got.value), got.version

    def all(self) -> list[tuple[Task, int]]:
        items = self.coord.children(PREFIX)
        return sorted(((Task.from_json(v.value), v.version) for v in items.values()),
                      key=lambda tv: tv[0].id)

    def write(self, task: Task, version: int, *, fenced: bool) -> int:
        """CAS ``task`` over ``version``; fenced writes are the leader's only."""
        op = Put(self.key(task.id), task.to_json(), version)
        if fenced:
            self.coord.fenced([op])
        else:
            self.coord.transaction([op])
        return version + 1

    def cancel(self, task_id: str) -> Task:
        """Queued: cancelled now. Running: asked to stop at its next step."""
        while True:
            task, version = self.load(task_id)
            if task.terminal:
                raise Conflict(f"task {task_id} already {task.state}")
            if task.state == TaskState.QUEUED:
                new = replace(task, state=TaskState.CANCELLED, finished_at=self.clock(),
                              message="cancelled before it started")
            else:
                new = replace(task, cancel_requested=True)
            try:
                self.write(new, version, fenced=False)
                return new
            except VersionMismatch:
                continue  # the leader moved it meanwhile: look again

    def wait(self, task_id: str, timeout_s: float, sleep: Callable[[float], None],
             monotonic: Callable[[], float]) -> Task:
        deadline = monotonic() + timeout_s
        while True:
            task, _ = self.load(task_id)
            if task.terminal:
                return task
            if monotonic() >= deadline:
                raise OperationTimeout(f"task {task_id} still {task.state} after {timeout_s:g} s",
                                       hint="wait longer, or `ahvlite task show ID`")
            sleep(0.1)


class TaskContext:
    """What a handler sees: its params, steps that run once, progress, cancel, fencing."""

    def __init__(self, runner: TaskRunner, task: Task, version: int) -> None:
        self._runner = runner
        self.task = task
        self.version = version
        self.params = task.params

    def _save(self, task: Task) -> None:
        while True:
            try:
                self.version = self._runner.store.write(task, self.version, fenced=True)
                self.task = task
                return
            except VersionMismatch:
                # Only a cancel request may write beside the owner; anything else means
                # another leader owns the task now.
                fresh, self.version = self._runner.store.load(task.id)
                if fresh.state != TaskState.RUNNING or fresh.owner_token != task.owner_token:
                    raise NotLeader(f"task {task.id} is no longer ours") from None
                task = replace(task, cancel_requested=fresh.cancel_requested)

    def _refresh_cancel(self) -> None:
        fresh, version = self._runner.store.load(self.task.id)
        if fresh.cancel_requested:
            raise TaskCancelled(f"task {self.task.id} cancelled on request")
        if fresh.owner_token != self.task.owner_token:
            raise NotLeader(f"task {self.task.id} is no longer ours")
        self.version = version

    def check_leader(self) -> int:
        """Call right before an outside side effect (libvirt, OVS)."""
        return self._runner.coord.check_leader()

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` once for this task; ``fn`` must be idempotent (see module doc)."""
        if name in self.task.steps_done:
            return self.task.steps_done[name]
        self._refresh_cancel()
        self.check_leader()
        value = fn()
        self._save(replace(self.task, steps_done={**self.task.steps_done, name: value}))
        return value

    def progress(self, pct: int, message: str) -> None:
        self._save(replace(self.task, progress_pct=max(0, min(100, pct)), message=message))


class TaskRunner:
    """The leader's side: recover orphans, claim queued tasks, run them in a pool."""

    def __init__(self, coord: Coordinator, store: TaskStore, registry: dict[str, Handler],
                 identity: str, *, workers: int = 4) -> None:
        self.coord = coord
        self.store = store
        self.registry = registry
        self.identity = identity
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._active: set[str] = set()
        self._mu = threading.Lock()

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="task")

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def active(self) -> int:
        with self._mu:
            return len(self._active)

    def recover(self, token: int) -> list[str]:
        """Tasks another leader left running: back to the queue, or failed with why."""
        changed = []
        for task, version in self.store.all():
            with self._mu:
                mine_and_alive = task.id in self._active
            # Our own token counts too: a connection that was SUSPENDED made our workers
            # stop at their next fenced write while the leadership itself survived.
            if task.state != TaskState.RUNNING or mine_and_alive:
                continue
            handler = self.registry.get(task.kind)
            who = f"leader {task.owner} (token {task.owner_token})"
            if handler is not None and handler.resumable and task.attempts < MAX_ATTEMPTS:
                new = replace(task, state=TaskState.QUEUED, owner=None, owner_token=None,
                              message=f"resumed: {who} stopped while running it")
            else:
                why = ("not resumable" if handler is None or not handler.resumable
                       else f"{task.attempts} attempts")
                new = replace(task, state=TaskState.FAILED, finished_at=self.store.clock(),
                              error=f"{who} stopped while running it ({why})")
            try:
                self.store.write(new, version, fenced=True)
                changed.append(task.id)
            except VersionMismatch:
                continue
        return changed

    def poll(self, token: int) -> list[str]:
        """Claim every queued task we have room for; returns the ids started."""
        started: list[str] = []
        if self._pool is None:
            return started
        for task, version in self.store.all():
            if task.state != TaskState.QUEUED or self.active() >= self.workers:
                continue
            claimed = replace(task, state=TaskState.RUNNING, owner=self.identity,
                              owner_token=token, attempts=task.attempts + 1,
                              started_at=task.started_at or self.store.clock())
            error = None
            if task.kind not in self.registry:
                error = f"unknown task kind {task.kind!r}"
            else:
                try:  # submitters should validate; the leader never trusts that they did
                    claimed = replace(claimed, params=self.registry[task.kind].validate(
                        task.params))
                except InvalidSpec as exc:
                    error = exc.message
            if error is not None:
                claimed = replace(claimed, state=TaskState.FAILED, finished_at=self.store.clock(),
                                  error=error)
            try:
                version = self.store.write(claimed, version, fenced=True)
            except VersionMismatch:
                continue
            if claimed.state != TaskState.RUNNING:
                continue
            with self._mu:
                self._active.add(task.id)
            self._pool.submit(self._execute, claimed, version)
            started.append(task.id)
        return started

    def _execute(self, task: Task, version: int) -> None:
        ctx = TaskContext(self, task, version)
        try:
            try:
                result = self.registry[task.kind].run(ctx)
                end = replace(ctx.task, state=TaskState.SUCCEEDED, progress_pct=100,
                              result=result, finished_at=self.store.clock(), message="done")
            except NotLeader:
                log.warning("task %s: leadership lost; the next leader takes it over", task.id)
                return
            except TaskCancelled as exc:
                end = replace(ctx.task, state=TaskState.CANCELLED, error=exc.message,
                              finished_at=self.store.clock())
            except AhvliteError as exc:
                end = replace(ctx.task, state=TaskState.FAILED, error=exc.message,
                              finished_at=self.store.clock())
            except Exception as exc:  # a handler bug still ends its task, with the reason
                log.exception("task %s failed", task.id)
                end = replace(ctx.task, state=TaskState.FAILED, finished_at=self.store.clock(),
                              error=f"{type(exc).__name__}: {exc}")
            self._finish(ctx, end)
        finally:
            with self._mu:
                self._active.discard(task.id)

    def _finish(self, ctx: TaskContext, end: Task) -> None:
        try:
            ctx._save(end)
        except NotLeader:
            pass
        except AhvliteError:
            log.exception("task %s: could not record its end", end.id)
