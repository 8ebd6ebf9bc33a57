"""``ahvlite host maintenance enter|exit|show``.

``enter`` marks the host unschedulable at once. With ``--wait`` it then empties the host
here, showing progress; without, it hands the emptying to a detached ``enter --wait``
process (its log beside the state) and returns, and ``show`` follows it. The host's
maintenance lock is taken before the host is marked and handed to that process, so a
second ``enter`` or an ``exit`` meanwhile is refused (Conflict) until it ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from ahvlite.cli.context import ClusterOpt, load
from ahvlite.cli.migrate import migration_bar, settings_from_options
from ahvlite.cli.output import console, emit_json, err_console, table
from ahvlite.cluster import maintenance
from ahvlite.errors import InvalidSpec

app = typer.Typer(no_args_is_help=True,
                  help="Maintenance mode: empty a host (live migration), bring it back.")
HostArg = Annotated[str, typer.Argument(help="Host name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _log_path(path: Path, host: str) -> Path:
    return path.resolve().parent / "cluster-state" / f"maintenance-{host}.log"


@app.command()
def enter(
    host: HostArg,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Stay until the host is empty, showing progress.")] = False,
    parallel: Annotated[int, typer.Option(
        "--parallel", help="Migrations at a time.")] = maintenance.DEFAULT_PARALLEL,
    max_downtime_ms: Annotated[int, typer.Option(
        "--max-downtime-ms", help="Longest pause a guest may see (the stun window cap).")]
    = 300,
    shutdown_timeout_s: Annotated[float, typer.Option(
        "--shutdown-timeout-s", help="Wait this long for a pinned VM's clean shutdown, "
                                     "then power it off.")] = 60,
    cluster: ClusterOpt = None, json_out: JsonOpt = False,
) -> None:
    """Stop placing VMs on HOST, live-migrate its VMs away, shut its pinned VMs down."""
    path, cspec = load(cluster)
    # Every check before anything changes: a bad option must not leave the host
    # unschedulable with nothing emptying it.
    maintenance.check_parallel(parallel, "--parallel")
    settings = settings_from_options(max_downtime_ms=max_downtime_ms)
    if shutdown_timeout_s <= 0:
        raise InvalidSpec("--shutdown-timeout-s", shutdown_timeout_s, "seconds > 0")
    cspec.host(host)
    if not wait:
        log = _log_path(path, host)
        with maintenance.host_lock(cspec, host, doing="enter"):
            entry = maintenance.mark_unschedulable(cspec, host)
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("ab") as out:
                # A session of its own: the emptying outlives this command and its
                # terminal.
                subprocess.Popen(
                    [sys.executable, "-m", "ahvlite.cli.main", "host", "maintenance",
                     "enter", host, "--wait", "--json", "--parallel", str(parallel),
                     "--max-downtime-ms", str(max_downtime_ms),
                     "--shutdown-timeout-s", str(shutdown_timeout_s), "--cluster",
                     str(path)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                    start_new_session=True,
                    env={**os.environ, "COLUMNS": "120"})
        data = {"host": host, "state": entry["state"], "log": str(log)}
        if json_out:
            emit_json(data)
        else:
            console.print(f"{host} takes no new VMs; emptying it in the background "
                          f"(log {log}). `ahvlite host maintenance show` follows it.",
                          highlight=False)
        return
    with migration_bar(not json_out) as on_progress:
        def report(msg: str) -> None:
            if not json_out:
                err_console.log(msg)
        result = maintenance.enter(cspec, host, settings=settings,
                                   parallel=parallel, shutdown_timeout_s=shutdown_timeout_s,
                                   report=report, on_progress=on_progress)
    if json_out:
        emit_json(result.to_dict())
        return
    console.print(f"[bold]{host}[/] is in maintenance ({result.took_s} s): "
                  f"{len(result.moved)} migrated, {len(result.shut_down)} pinned shut down",
                  highlight=False)
    rows = [[m["vm"], "migrated", m["to"], m["downtime_ms"]] for m in result.moved]
    rows += [[v, "shut down (pinned)", "", ""] for v in result.shut_down]
    rows += [[v, "not running, stays defined here", "", ""] for v in result.left]
    if rows:
        console.print(table(f"VMs of {host}", ["vm", "what", "to", "downtime ms"], rows))


@app.command(name="exit")
def exit_(
    host: HostArg,
    restore: Annotated[bool, typer.Option(
        "--restore", help="Migrate the VMs maintenance moved away back here.")] = False,
    cluster: ClusterOpt = None, json_out: JsonOpt = False,
) -> None:
    """Make HOST schedulable again (and start the pinned VMs it shut down)."""
    _path, cspec = load(cluster)
    with migration_bar(not json_out) as on_progress:
        def report(msg: str) -> None:
            if not json_out:
                err_console.log(msg)
        data = maintenance.exit_(cspec, host, restore=restore,
                                 report=report, on_progress=on_progress)
    if json_out:
        emit_json(data)
        return
    console.print(f"[bold]{host}[/] is schedulable: started {data['started'] or 'none'}, "
                  f"restored {[r['vm'] for r in data['restored']] or 'none'}",
                  highlight=False)
    for s in data["not_restored"]:
        err_console.print(f"[yellow]warning:[/] {s['vm']}: {s['reason']}", highlight=False)


@app.command()
def show(cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Each host's maintenance state and what maintenance did with its VMs."""
    _, cspec = load(cluster)
    data = maintenance.status(cspec)
    if json_out:
        emit_json(data)
        return
    rows = [[h, e.get("state"), ", ".join(f"{m['vm']}→{m['to']}" for m in e.get("moved", [])),
             ", ".join(e.get("shut_down", [])),
             "; ".join(f"{f['vm']}: {f['reason']}" for f in e.get("failed", []))]
            for h, e in data["hosts"].items()]
    console.print(table(f"maintenance in {cspec.name}",
                        ["host", "state", "migrated", "shut down", "failed"], rows))
