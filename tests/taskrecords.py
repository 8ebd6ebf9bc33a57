"""Task records written straight into a store, as a dead leader leaves them: how tests
show what a resumed attempt does (the next leader claims them as attempt N+1)."""

from __future__ import annotations

import time
from typing import Any

from ahvlite.controller.coord.api import MUST_NOT_EXIST, Coordinator
from ahvlite.controller.tasks import Task, TaskState, TaskStore, new_task_id
from tests.waiting import wait_for


def resumed_id() -> str:
    """The id of a task to be written with :func:`put_resumed` (its volumes' tags derive
    from it, so a test can stage what its earlier attempt left)."""
    return new_task_id(time.time())


def put_resumed(coord: Coordinator, kind: str, params: dict[str, Any], *,
                task_id: str | None = None, steps_done: dict[str, Any] | None = None,
                attempts: int = 1) -> str:
    """A queued task after ``attempts`` attempts by a leader that died (what
    ``TaskRunner.recover`` makes of it), with the steps it recorded."""
    task_id = task_id or resumed_id()
    task = Task(id=task_id, kind=kind, params=params, state=TaskState.QUEUED,
                attempts=attempts, steps_done=dict(steps_done or {}),
                created_at=time.time(), message="resumed: a dead leader ran it")
    coord.put(f"tasks/{task_id}", task.to_json(), MUST_NOT_EXIST)
    return task_id


def ended(coord: Coordinator, task_id: str, timeout_s: float = 60) -> Task:
    store = TaskStore(coord)
    task = wait_for(lambda: (t := store.load(task_id)[0]).terminal and t, timeout_s)
    assert task, f"task {task_id} did not end in {timeout_s} s"
    return task
