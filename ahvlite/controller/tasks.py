"""Persisted tasks: the record, the store operations, and the leader's runner.

A task lives at ``tasks/ID`` as JSON. Anyone may submit (create-only) or ask to
cancel; only the leader moves a task forward, and every such write is fenced, so a
deposed leader can never record progress. Handlers are split into named steps: a
finished step is recorded before the next starts, and a step's body must be idempotent
(it checks before it acts), because a new leader re-runs the one step the old leader
may have done without recording. That is how a VM is created once even if the leader
dies in the middle.

Records come from the store, which anything holding its credential may write (and a
newer ahvlite may add fields): a record that does not decode is never raised. Readers
see a failed stand-in with the reason, and the leader writes that stand-in back, so
one bad record costs one task, never the controller.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from pydantic import ConfigDict, TypeAdapter, ValidationError

from ahvlite.clock import SYSTEM, Clock, wait_until
from ahvlite.controller.coord.api import (
    MUST_NOT_EXIST,
    Coordinator,
    NotLeader,
    Put,
    VersionMismatch,
)
from ahvlite.controller.taskid import TASK_ID_RE, new_task_id
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
RECORD_EXCERPT = 2000  # characters of an undecodable record kept in its stand-in


@dataclass(frozen=True)
class Task:
    # How a stored record is decoded (TypeAdapter below): exact types, no unknown field.
    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)

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
    error_kind: str | None = None  # the error's class (errors.AhvliteError.kind)
    error_hint: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Task:
        """Decode a record; InvalidSpec (never anything else) when it does not fit."""
        try:
            return _DECODER.validate_json(raw)
        except ValidationError as exc:
            raise InvalidSpec("task record", _excerpt(raw), _why(exc)) from None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


_DECODER = TypeAdapter(Task)


def _excerpt(raw: bytes) -> str:
    return raw[:RECORD_EXCERPT * 4].decode("utf-8", "replace")[:RECORD_EXCERPT]


def _why(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "json_invalid":
        return f"JSON ({first['msg']})"
    if first["type"] == "dataclass_type":
        return "a JSON object"
    if first["type"] == "unexpected_keyword_argument":
        return (f"only the fields this version knows; {where!r} is not one "
                "(written by a newer ahvlite?)")
    return f"field {where}: {first['msg']}"


def decode(task_id: str, raw: bytes) -> tuple[Task, str | None]:
    """The task stored under ``task_id``, or, when the record does not decode, a failed
    stand-in keeping what it can (kind, params, the record's text) and the reason."""
    try:
        task = Task.from_json(raw)
    except InvalidSpec as exc:
        problem = f"undecodable task record: expected {exc.allowed}"
    except Exception as exc:  # whatever else a hostile record can provoke in a parser
        problem = f"undecodable task record ({type(exc).__name__})"
    else:
        if task.id == task_id:
            return task, None
        problem = f"undecodable task record: its id {task.id!r} is not its key"
    try:
        d = json.loads(raw)
    except Exception:  # not JSON (ValueError), too deep (RecursionError) ...
        d = None
    d = d if isinstance(d, dict) else {}
    kind, params, created = d.get("kind"), d.get("params"), d.get("created_at")
    return Task(
        id=task_id, kind=kind[:200] if isinstance(kind, str) else "?",
        params=params if isinstance(params, dict) else {}, state=TaskState.FAILED,
        created_at=float(created) if isinstance(created, int | float)
        and not isinstance(created, bool) else 0.0,
        error=problem, result={"record": _excerpt(raw)}), problem


class TaskCancelled(AhvliteError):
    kind = "cancelled"


class Handler(Protocol):
    """A task kind: ``run`` does the work through ``ctx.step``; resumable if steps allow."""

    @property
    def resumable(self) -> bool: ...

    def validate(self, params: dict[str, Any]) -> dict[str, Any]: ...
    def run(self, ctx: TaskContext) -> dict[str, Any]: ...




class TaskStore:
    """Tasks in the coordination store; ``clock`` stamps them (wall time) and paces
    :meth:`wait`."""

    def __init__(self, coord: Coordinator, clock: Clock = SYSTEM) -> None:
        self.coord = coord
        self.clock = clock

    def key(self, task_id: str) -> str:
        return f"{PREFIX}/{task_id}"

    def submit(self, kind: str, params: dict[str, Any],
               registry: dict[str, Handler] | None = None, *,
               submitted_by: str | None = None, task_id: str | None = None) -> Task:
        """Queue a task. ``task_id`` chosen by the submitter makes the submission
        idempotent: sent again (its first answer was lost), the same task comes back
        rather than a second one."""
        if registry is not None:
            if kind not in registry:
                raise InvalidSpec("kind", kind, ", ".join(sorted(
                    k for k, h in registry.items() if getattr(h, "offered", True))))
            params = registry[kind].validate(params)
        now = self.clock.time()
        if task_id is not None and not TASK_ID_RE.fullmatch(task_id):
            raise InvalidSpec("id", task_id, "a task id like 1764117600000-0a1b2c3d")
        task = Task(id=task_id or new_task_id(now), kind=kind, params=params,
                    created_at=now, submitted_by=submitted_by)
        try:
            self.coord.put(self.key(task.id), task.to_json(), MUST_NOT_EXIST)
        except VersionMismatch:
            if task_id is None:
                raise
            have, _ = self.load(task_id)
            if (have.kind, have.params, have.submitted_by) != (kind, params, submitted_by):
                raise Conflict(f"task {task_id} exists and is another task",
                               hint="let the client choose a new id") from None
            return have
        return task

    def load(self, task_id: str) -> tuple[Task, int]:
        """The task and its version; an undecodable record as its failed stand-in."""
        got = self.coord.get(self.key(task_id))
        if got is None:
            raise NotFound(f"task {task_id} does not exist", hint="see `ahvlite task list`")
        return decode(task_id, got.value)[0], got.version

    def records(self) -> list[tuple[Task, int, str | None]]:
        """Every task with its version and, for a record that does not decode, why
        (the task is then its failed stand-in, see :func:`decode`)."""
        items = self.coord.children(PREFIX)
        out = [(*decode(task_id, v.value), v.version) for task_id, v in items.items()]
        return sorted(((t, version, problem) for t, problem, version in out),
                      key=lambda r: r[0].id)

    def all(self) -> list[tuple[Task, int]]:
        return [(t, version) for t, version, _ in self.records()]

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
                new = replace(task, state=TaskState.CANCELLED, finished_at=self.clock.time(),
                              message="cancelled before it started")
            else:
                new = replace(task, cancel_requested=True)
            try:
                self.write(new, version, fenced=False)
                return new
            except VersionMismatch:
                continue  # the leader moved it meanwhile: look again

    def wait(self, task_id: str, timeout_s: float) -> Task:
        task = wait_until(lambda: self.load(task_id)[0], timeout_s=timeout_s, interval_s=0.1,
                          clock=self.clock, done=lambda t: t.terminal)
        if not task.terminal:
            raise OperationTimeout(f"task {task_id} still {task.state} after {timeout_s:g} s",
                                   hint="wait longer, or `ahvlite task show ID`")
        return task


class TaskContext:
    """What a handler sees: its params, steps that run once, progress, cancel, fencing."""

    def __init__(self, runner: TaskRunner, task: Task, version: int) -> None:
        self._runner = runner
        self.task = task
        self.version = version
        self.params = task.params
        self.clock = runner.store.clock  # the controller's: steps time and wait by it

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
        for task, version, _ in self.store.records():
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
                new = replace(task, state=TaskState.FAILED, finished_at=self.store.clock.time(),
                              error=f"{who} stopped while running it ({why})")
            try:
                self.store.write(new, version, fenced=True)
                changed.append(task.id)
            except VersionMismatch:
                continue
        return changed

    def poll(self, token: int) -> list[str]:
        """Mark undecodable records failed, claim every queued task we have room for;
        returns the ids started. One task's trouble never stops the others."""
        started: list[str] = []
        if self._pool is None:
            return started
        for task, version, problem in self.store.records():
            try:
                if problem is not None:
                    self._fail_record(task, version, problem)
                elif (task.state == TaskState.QUEUED and self.active() < self.workers
                      and self._claim(task, version, token)):
                    started.append(task.id)
            except NotLeader:
                raise
            except Exception:
                log.exception("task %s: could not be claimed; the next poll tries again",
                              task.id)
        return started

    def _fail_record(self, stand_in: Task, version: int, problem: str) -> None:
        """Write the failed stand-in over a record that does not decode (fenced, and
        only over the version read: a record rewritten meanwhile is looked at again)."""
        log.warning("task %s: %s; marked failed", stand_in.id, problem)
        try:
            self.store.write(replace(stand_in, finished_at=self.store.clock.time()), version,
                             fenced=True)
        except VersionMismatch:
            pass

    def _claim(self, task: Task, version: int, token: int) -> bool:
        assert self._pool is not None
        claimed = replace(task, state=TaskState.RUNNING, owner=self.identity,
                          owner_token=token, attempts=task.attempts + 1,
                          started_at=task.started_at or self.store.clock.time())
        error = None
        if task.kind not in self.registry:
            error = f"unknown task kind {task.kind!r}"
        else:
            try:  # submitters should validate; the leader never trusts that they did
                claimed = replace(claimed, params=self.registry[task.kind].validate(
                    task.params))
            except AhvliteError as exc:
                error = exc.message
            except Exception as exc:  # a kind's bug on odd params fails only this task
                log.exception("task %s: validating its params failed", task.id)
                error = f"invalid params ({type(exc).__name__}: {exc})"
        if error is not None:
            claimed = replace(claimed, state=TaskState.FAILED, finished_at=self.store.clock.time(),
                              error=error)
        try:
            version = self.store.write(claimed, version, fenced=True)
        except VersionMismatch:
            return False
        if claimed.state != TaskState.RUNNING:
            return False
        with self._mu:
            self._active.add(task.id)
        self._pool.submit(self._execute, claimed, version)
        return True

    def _execute(self, task: Task, version: int) -> None:
        ctx = TaskContext(self, task, version)
        try:
            try:
                result = self.registry[task.kind].run(ctx)
                end = replace(ctx.task, state=TaskState.SUCCEEDED, progress_pct=100,
                              result=result, finished_at=self.store.clock.time(), message="done")
            except NotLeader:
                log.warning("task %s: leadership lost; the next leader takes it over", task.id)
                return
            except TaskCancelled as exc:
                end = replace(ctx.task, state=TaskState.CANCELLED, error=exc.message,
                              finished_at=self.store.clock.time())
            except AhvliteError as exc:
                end = replace(ctx.task, state=TaskState.FAILED, error=exc.message,
                              error_kind=exc.kind, error_hint=exc.hint,
                              finished_at=self.store.clock.time())
            except Exception as exc:  # a handler bug still ends its task, with the reason
                log.exception("task %s failed", task.id)
                end = replace(ctx.task, state=TaskState.FAILED, finished_at=self.store.clock.time(),
                              error=f"{type(exc).__name__}: {exc}")
            self._finish(ctx, end)
        finally:
            with self._mu:
                self._active.discard(task.id)

    def _finish(self, ctx: TaskContext, end: Task) -> None:
        try:
            ctx._save(end)
            return
        except NotLeader:
            return
        except AhvliteError:
            log.exception("task %s: could not record its end", end.id)
            return
        except Exception as exc:  # e.g. a result that is not JSON: record why instead
            log.exception("task %s: could not record its end", end.id)
            reason = f"its end could not be recorded ({type(exc).__name__}: {exc})"
        try:
            ctx._save(replace(ctx.task, state=TaskState.FAILED, result=None, error=reason,
                              finished_at=self.store.clock.time()))
        except Exception:
            log.exception("task %s: could not record its failure either", end.id)
