"""``ahvlite task``: the tasks the leader runs, through the API (submit, list, show,
wait, cancel)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from ahvlite.cli.api import session
from ahvlite.cli.output import console, emit_json, table
from ahvlite.errors import InvalidSpec, OperationFailed

app = typer.Typer(no_args_is_help=True, help="Controller tasks: submit, list, show, wait, cancel.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
IdArg = Annotated[str, typer.Argument(help="Task id (from `task list`).")]


def _row(t: Any) -> list[Any]:
    return [t.id, t.kind, t.state, f"{t.progress_pct}%", t.owner or "",
            t.submitted_by or "", t.error or t.message]


def _parse_params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidSpec("--param", item, "KEY=VALUE (VALUE as JSON, or a plain string)")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _task_id(task_id: str) -> str:
    """A task id checked before it goes into a URL path."""
    import re

    from ahvlite.controller.api.models import TASK_ID

    if not re.fullmatch(TASK_ID, task_id):
        raise InvalidSpec("task", task_id, "a task id like 1732582400000-1a2b3c4d "
                          "(`ahvlite task list`)")
    return task_id


@app.command()
def submit(
    kind: Annotated[str, typer.Argument(
        help="Task kind, e.g. vm.lifecycle, vm.spec.create, vm.migrate, template.deploy.")],
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="KEY=VALUE, repeatable.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Queue a task for the leader (its parameters are checked first)."""
    with session() as c:
        task = c.submit(kind, _parse_params(param or []))
    if json_out:
        emit_json(task.model_dump())
    else:
        console.print(task.id, highlight=False)


@app.command(name="list")
def list_(
    state: Annotated[str | None, typer.Option("--state", help="Only tasks in this state.")]
    = None,
    kind: Annotated[str | None, typer.Option("--kind", help="Only tasks of this kind.")]
    = None,
    json_out: JsonOpt = False,
) -> None:
    """Every task, oldest first."""
    with session() as c:
        tasks = c.tasks(state=state, kind=kind)
    if json_out:
        emit_json([t.model_dump() for t in tasks])
        return
    console.print(table("tasks", ["id", "kind", "state", "progress", "owner", "by",
                                  "message"], [_row(t) for t in tasks]))


def _show(task: Any) -> None:
    for k, v in task.model_dump().items():
        console.print(f"[bold]{k:16}[/] {escape(str(v))}", highlight=False)


@app.command()
def show(task_id: IdArg, json_out: JsonOpt = False) -> None:
    """One task in full."""
    with session() as c:
        task = c.task(_task_id(task_id))
    if json_out:
        emit_json(task.model_dump())
    else:
        _show(task)


@app.command()
def wait(task_id: IdArg,
         timeout_s: Annotated[float, typer.Option("--timeout", help="Seconds.", min=0)] = 600,
         json_out: JsonOpt = False) -> None:
    """Wait until the task ends; exit 9 if it failed or was cancelled."""
    from ahvlite.cli.api import task_progress

    with session() as c, task_progress(not json_out, f"task {task_id}") as show_progress:
        task = c.wait(_task_id(task_id), show_progress, timeout_s=timeout_s)
    if json_out:
        emit_json(task.model_dump())
    else:
        _show(task)
    if task.state != "succeeded":
        raise OperationFailed(f"task {task_id} {task.state}: {task.error or task.message}")


@app.command()
def cancel(task_id: IdArg, json_out: JsonOpt = False) -> None:
    """Cancel a queued task now, or ask a running one to stop at its next step."""
    with session() as c:
        task = c.cancel(_task_id(task_id))
    if json_out:
        emit_json(task.model_dump())
    else:
        console.print(f"task {task.id}: "
                      + ("cancelled" if task.state == "cancelled" else "cancel requested"),
                      highlight=False)
