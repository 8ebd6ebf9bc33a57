"""How a CLI command reaches the cluster: through the API of any controller.

Every command parses, calls the API (a read, or a task the leader runs), renders. The
client config comes from ``$AHVLITE_CONFIG`` / ``~/.config/ahvlite/client.yaml``, each
key overridable by the environment (``ahvlite lab env`` prints the exports for a lab).
A task is followed to its end with its progress shown (``--no-wait`` prints its id
and returns: the task goes on without the CLI), and a failed task ends the command with
the task's own error and exit code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from ahvlite.cli.output import console, emit_json, err_console
from ahvlite.errors import error_of

WaitOpt = Annotated[bool, typer.Option(
    "--wait/--no-wait", help="Follow the task to its end (default), or print its id and "
                             "return (the leader goes on with it either way).")]


def client() -> Any:
    """The API client from the client config (a clear error when there is none)."""
    from ahvlite.controller.api.client import ApiClient

    return ApiClient.from_env()


@contextmanager
def session() -> Iterator[Any]:
    c = client()
    try:
        yield c
    finally:
        c.close()


def get(path: str, **params: Any) -> Any:
    """A read, served by any controller."""
    with session() as c:
        return c.get(path, **{k: v for k, v in params.items() if v is not None})


def run_task(kind: str, params: dict[str, Any], *, json_out: bool, wait: bool = True,
             title: str | None = None,
             on_progress: Callable[[int, str], None] | None = None) -> dict[str, Any] | None:
    """Submit ``kind`` and (with ``wait``) follow it; its result, or None without
    ``wait`` (its id is printed). A failed task raises its own error."""
    with session() as c:
        task = c.submit(kind, params)
        if not wait:
            if json_out:
                emit_json({"task": task.id})
            else:
                console.print(task.id, highlight=False)
            return None
        if on_progress is not None:
            end = c.wait(task.id, on_progress)
        else:
            with task_progress(not json_out, title or f"{kind} ({task.id})") as show:
                end = c.wait(task.id, show)
    if end.state != "succeeded":
        what = end.error or end.message or end.state
        raise error_of(end.error_kind, f"{what} (task {end.id} {end.state})", end.error_hint)
    return dict(end.result or {})


@contextmanager
def task_progress(enabled: bool, first: str) -> Iterator[Callable[[int, str], None]]:
    """A spinner that follows a task's messages (and logs each new one)."""
    if not enabled:
        yield lambda _pct, _msg: None
        return
    with err_console.status(first) as status:
        seen: set[str] = set()

        def show(pct: int, message: str) -> None:
            if message and message not in seen:
                seen.add(message)
                err_console.log(message, highlight=False)
            status.update(f"{message or first} [{pct}%]")

        yield show
