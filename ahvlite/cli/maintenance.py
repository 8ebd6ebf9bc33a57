"""``ahvlite host maintenance enter|exit|show``, through the API.

``enter`` is a task the leader runs: it marks the host unschedulable, empties it and
shuts its pinned VMs down, and goes on without the CLI (a new leader finishes it).
Without ``--wait`` the command returns once the host takes no new VMs and HA admitted
its moves (a refusal is still this command's error); with it, it follows the task to
its end, showing each VM's progress. While an ``enter`` of a host
runs, an ``exit`` of it is refused (Conflict).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ahvlite.cli import api
from ahvlite.cli.output import console, emit_json, err_console, table
from ahvlite.errors import InvalidSpec, OperationTimeout, error_of

app = typer.Typer(no_args_is_help=True,
                  help="Maintenance mode: empty a host (live migration), bring it back.")
HostArg = Annotated[str, typer.Argument(help="Host name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ParallelOpt = Annotated[int, typer.Option("--parallel", help="Migrations at a time.")]
DowntimeOpt = Annotated[int, typer.Option(
    "--max-downtime-ms", help="Longest pause a guest may see (the stun window cap).")]
MARKED_WAIT_S = 60.0  # how long `enter` waits for the leader to mark the host
STARTED_STEP = "admitted"  # cluster.maintenance.ADMITTED (not imported: `--help` stays light)


def _check(parallel: int, max_downtime_ms: int) -> None:
    """Cheap checks here, for a fast error naming the option (the leader checks again)."""
    if parallel < 1 or parallel > 16:
        raise InvalidSpec("--parallel", parallel, "a whole number of migrations at a time, "
                                                  "1 to 16")
    if max_downtime_ms < 1 or max_downtime_ms > 60_000:
        raise InvalidSpec("--max-downtime-ms", max_downtime_ms,
                          "1 to 60000 (a guest paused longer loses its network sessions)")


def _wait_marked(c: Any, task_id: str) -> Any:
    """Follow the task until the host is marked and its moves admitted (from then on
    it empties the host, come what may) or until it ended."""
    version = -1
    waited = 0.0
    while waited < MARKED_WAIT_S:
        task = c.get(f"/v1/tasks/{task_id}", wait_s=5, after_version=version)
        version = task["version"]
        if STARTED_STEP in (task.get("steps_done") or {}):
            return {**task, "state": "running"}  # whatever came after is for `show`
        if task["state"] in ("succeeded", "failed", "cancelled"):
            return task
        waited += 5
    raise OperationTimeout(f"the leader has not started task {task_id} in "
                           f"{MARKED_WAIT_S:g} s", hint=f"`ahvlite task show {task_id}`; "
                           "the task stays queued until a leader runs it")


@app.command()
def enter(
    host: HostArg,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Stay until the host is empty, showing progress.")] = False,
    parallel: ParallelOpt = 2,
    max_downtime_ms: DowntimeOpt = 300,
    shutdown_timeout_s: Annotated[float, typer.Option(
        "--shutdown-timeout-s", help="Wait this long for a pinned VM's clean shutdown, "
                                     "then power it off.")] = 60,
    json_out: JsonOpt = False,
) -> None:
    """Stop placing VMs on HOST, live-migrate its VMs away, shut its pinned VMs down."""
    # Every check before anything is submitted: a bad option must not leave the host
    # unschedulable with nothing emptying it.
    _check(parallel, max_downtime_ms)
    if not 0 < shutdown_timeout_s <= 3600:
        raise InvalidSpec("--shutdown-timeout-s", shutdown_timeout_s, "seconds, above 0 and "
                                                                      "at most 3600")
    params = {"host": host, "parallel": parallel, "max_downtime_ms": max_downtime_ms,
              "shutdown_timeout_s": float(shutdown_timeout_s)}
    if wait:
        result = api.run_task("maintenance.enter", params, json_out=json_out,
                              title=f"entering maintenance of {host}")
        assert result is not None
        _show_entered(host, result, json_out)
        return
    with api.session() as c:
        task = c.submit("maintenance.enter", params)
        seen = _wait_marked(c, task.id)
    if seen["state"] in ("failed", "cancelled"):
        raise error_of(seen.get("error_kind"), f"{seen.get('error') or seen['state']} "
                       f"(task {task.id} {seen['state']})", seen.get("error_hint"))
    data = {"host": host, "state": "entering" if seen["state"] != "succeeded"
            else (seen.get("result") or {}).get("state", "in_maintenance"), "task": task.id}
    if json_out:
        emit_json(data)
    else:
        console.print(f"{host} takes no new VMs; task {task.id} empties it (the leader "
                      f"goes on without this command). `ahvlite task wait {task.id}` or "
                      "`ahvlite host maintenance show` follows it.", highlight=False)


def _show_entered(host: str, result: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(result)
        return
    console.print(f"[bold]{host}[/] is in maintenance ({result['took_s']} s): "
                  f"{len(result['moved'])} migrated, {len(result['shut_down'])} pinned shut "
                  "down", highlight=False)
    rows = [[m["vm"], "migrated", m["to"], m.get("downtime_ms") or ""]
            for m in result["moved"]]
    rows += [[v, "shut down (pinned)", "", ""] for v in result["shut_down"]]
    rows += [[v, "not running, stays defined here", "", ""] for v in result["left"]]
    if rows:
        console.print(table(f"VMs of {host}", ["vm", "what", "to", "downtime ms"], rows))


@app.command(name="exit")
def exit_(
    host: HostArg,
    restore: Annotated[bool, typer.Option(
        "--restore", help="Migrate the VMs maintenance moved away back here.")] = False,
    parallel: ParallelOpt = 2,
    max_downtime_ms: DowntimeOpt = 300,
    wait: api.WaitOpt = True,
    json_out: JsonOpt = False,
) -> None:
    """Make HOST schedulable again (and start the pinned VMs it shut down)."""
    _check(parallel, max_downtime_ms)
    data = api.run_task("maintenance.exit", {"host": host, "restore": restore,
                                             "parallel": parallel,
                                             "max_downtime_ms": max_downtime_ms},
                        json_out=json_out, wait=wait, title=f"leaving maintenance of {host}")
    if data is None:
        return
    if json_out:
        emit_json(data)
        return
    console.print(f"[bold]{host}[/] is schedulable: started {data['started'] or 'none'}, "
                  f"restored {[r['vm'] for r in data['restored']] or 'none'}",
                  highlight=False)
    for s in data["not_restored"]:
        err_console.print(f"[yellow]warning:[/] {s['vm']}: {s['reason']}", highlight=False)


@app.command()
def show(json_out: JsonOpt = False) -> None:
    """Each host's maintenance state and what maintenance did with its VMs."""
    data = api.get("/v1/maintenance")
    if json_out:
        emit_json(data)
        return
    rows = [[h, e.get("state"), ", ".join(f"{m['vm']}→{m['to']}" for m in e.get("moved", [])),
             ", ".join(e.get("shut_down", [])),
             "; ".join(f"{f['vm']}: {f['reason']}" for f in e.get("failed", []))]
            for h, e in data["hosts"].items()]
    console.print(table(f"maintenance in {data.get('cluster')}",
                        ["host", "state", "migrated", "shut down", "failed"], rows))
