"""``ahvlite storage``: the iSCSI path (targets, their health, where each disk's
session is) and the redirector daemon each host runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ahvlite.cli.output import console, emit_json, table

app = typer.Typer(no_args_is_help=True, help="The storage path: iSCSI targets, health, "
                                             "sessions.")
redirector_app = typer.Typer(no_args_is_help=True, help="The iSCSI redirector daemon.")
app.add_typer(redirector_app, name="redirector")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@redirector_app.command("run")
def redirector_run(
    config: Annotated[Path, typer.Option("--config", help="The redirector's JSON config.")],
) -> None:
    """Serve the iSCSI redirector of this host (foreground; ended by SIGTERM)."""
    from ahvlite.storage import config as cfg_mod
    from ahvlite.storage import redirector

    redirector.run(cfg_mod.load(config))


def _show_human(view: dict[str, Any]) -> None:
    hosts = view["hosts"]
    names = [h["host"] for h in hosts]
    rows = []
    for h in hosts:
        if h.get("error"):
            rows.append([h["host"], f"[red]{h['error']}[/]"] + [""] * len(names))
            continue
        seen = {t["host"]: t for t in h["targets"]}
        cells = []
        for n in names:
            t = seen.get(n)
            if t is None:
                cells.append("-")
            else:
                colour = {"healthy": "green", "failed": "red"}.get(t["state"], "yellow")
                cells.append(f"[{colour}]{t['state']}[/] x{t['ok_streak'] or t['fail_streak']}")
        local = h.get("local_target") or {}
        rows.append([h["host"], f"{local.get('exports', '?')} disks"
                     + ("" if local.get("health_target") else " (not serving)"), *cells])
    console.print(table("targets as each host's redirector sees them",
                        ["redirector on", "its target", *names], rows))
    srows = [[s["vm"] or s["vm_uuid"] or s["initiator"], s["disk"] or s["target"],
              s["vm_host"] or s["address"], s["on"],
              "" if s["home"] else "[yellow]remote[/]"]
             for s in view["sessions"]]
    console.print(table("VM disk sessions", ["VM", "disk", "VM runs on", "session on",
                                             ""], srows))


@app.command()
def show(json_out: JsonOpt = False) -> None:
    """Each host's targets and their health as its redirector sees them, and which
    target each VM disk's session is on now (read by a controller)."""
    from ahvlite.cli.api import get

    view = get("/v1/storage")
    if json_out:
        emit_json(view)
    else:
        _show_human(view)
