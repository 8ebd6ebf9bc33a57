"""``ahvlite task``: the controller's persisted tasks.

Rule for mutating commands: when a controller store is configured (``--store`` or
$AHVLITE_STORE) they submit a task and print its id (``task wait ID`` follows it);
without one they run in this process.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from ahvlite.cli.controller import STORE_ENV, StoreOpt, store_url
from ahvlite.cli.output import console, emit_json, err_console, table
from ahvlite.errors import InvalidSpec, OperationFailed

app = typer.Typer(no_args_is_help=True, help="Controller tasks: submit, list, show, wait, cancel.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
IdArg = Annotated[str, typer.Argument(help="Task id (from `task list`).")]
WaitOpt = Annotated[bool, typer.Option(
    "--wait", help="With a controller store: wait for the task and print its result.")]
WAIT_S = 3600.0


def configured_store(store: str | None) -> str | None:
    """The store a mutating command submits to: ``--store``, then $AHVLITE_STORE."""
    return store or os.environ.get(STORE_ENV) or None


def submit_and_report(store: str, kind: str, params: dict[str, Any], *, wait: bool,
                      json_out: bool, cluster: Path | None = None) -> None:
    """Submit ``kind`` (params validated first, host names against ``cluster`` when
    given), print its id; with ``wait``, its end."""
    from ahvlite.controller.kinds import registry

    ts = _store(store)
    try:
        cspec = None
        if cluster is not None:
            from ahvlite.cluster.legacy import open_cluster_file

            cspec = open_cluster_file(cluster)
        task = ts.submit(kind, params, registry((lambda: cspec) if cspec is not None else None))
        if not wait:
            if json_out:
                emit_json({"task": task.id})
            else:
                console.print(task.id)
            return
        if not json_out:
            err_console.print(f"task {task.id} submitted; waiting", highlight=False)
        task = ts.wait(task.id, WAIT_S, time.sleep, time.monotonic)
    finally:
        ts.coord.close()
    if json_out:
        emit_json({"task": task.id, "state": task.state, "result": task.result,
                   "error": task.error})
    else:
        console.print(f"task {task.id} {task.state}", highlight=False)
        for k, v in (task.result or {}).items():
            console.print(f"[bold]{k:19}[/] {v}", highlight=False)
    if task.state != "succeeded":
        raise OperationFailed(f"task {task.id} {task.state}: {task.error or task.message}")


def _store(store: str | None) -> Any:
    from ahvlite.controller.coord import open_store
    from ahvlite.controller.tasks import TaskStore

    return TaskStore(open_store(store_url(store)), time.time)


def _row(t: Any) -> list[Any]:
    return [t.id, t.kind, t.state, f"{t.progress_pct}%", t.owner or "",
            t.error or t.message]


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


@app.command()
def submit(
    kind: Annotated[str, typer.Argument(
        help="Task kind: sleep, vm.create, vm.lifecycle, vm.spec.create.")],
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="KEY=VALUE, repeatable.")] = None,
    store: StoreOpt = None, json_out: JsonOpt = False,
) -> None:
    """Queue a task for the leader."""
    from ahvlite.controller.kinds import registry

    ts = _store(store)
    try:
        task = ts.submit(kind, _parse_params(param or []), registry())
    finally:
        ts.coord.close()
    if json_out:
        emit_json(asdict(task))
    else:
        console.print(task.id)


@app.command(name="list")
def list_(store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """Every task, oldest first."""
    ts = _store(store)
    try:
        tasks = [t for t, _ in ts.all()]
    finally:
        ts.coord.close()
    if json_out:
        emit_json([asdict(t) for t in tasks])
        return
    console.print(table("tasks", ["id", "kind", "state", "progress", "owner", "message"],
                        [_row(t) for t in tasks]))


def _show(task: Any) -> None:
    for k, v in asdict(task).items():
        console.print(f"[bold]{k:16}[/] {v}", highlight=False)


@app.command()
def show(task_id: IdArg, store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """One task in full."""
    ts = _store(store)
    try:
        task, _ = ts.load(task_id)
    finally:
        ts.coord.close()
    if json_out:
        emit_json(asdict(task))
    else:
        _show(task)


@app.command()
def wait(task_id: IdArg, store: StoreOpt = None,
         timeout_s: Annotated[float, typer.Option("--timeout", help="Seconds.", min=0)] = 600,
         json_out: JsonOpt = False) -> None:
    """Wait until the task ends; exit 9 if it failed or was cancelled."""
    ts = _store(store)
    try:
        task = ts.wait(task_id, timeout_s, time.sleep, time.monotonic)
    finally:
        ts.coord.close()
    if json_out:
        emit_json(asdict(task))
    else:
        _show(task)
    if task.state != "succeeded":
        raise OperationFailed(f"task {task_id} {task.state}: {task.error or task.message}")


@app.command()
def cancel(task_id: IdArg, store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """Cancel a queued task now, or ask a running one to stop at its next step."""
    ts = _store(store)
    try:
        task = ts.cancel(task_id)
    finally:
        ts.coord.close()
    if json_out:
        emit_json(asdict(task))
    else:
        console.print(f"task {task.id}: "
                      + ("cancelled" if task.state == "cancelled" else "cancel requested"))
