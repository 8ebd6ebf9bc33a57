"""``ahvlite ha``: VM high availability settings, reservations and protected VMs."""

from __future__ import annotations

from typing import Annotated

import typer

from ahvlite.cli.context import ClusterOpt, load
from ahvlite.cli.controller import StoreOpt
from ahvlite.cli.output import console, emit_json, err_console, progress, table

app = typer.Typer(no_args_is_help=True,
                  help="VM high availability: mode, reservations, protected VMs.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command()
def show(cluster: ClusterOpt = None, json_out: JsonOpt = False,
         store: StoreOpt = None) -> None:
    """Mode, reservation per host, protected VMs and failover capacity; with a
    controller store also the leader's view (host verdicts, restarts, failures)."""
    from ahvlite.cli.task import configured_store
    from ahvlite.controller.ha import inventory

    path, cspec = load(cluster)
    with progress(not json_out, "reading hosts and VMs"):
        data = inventory.show(path, cspec)
        url = configured_store(store)
        data["leader_view"] = inventory.leader_view(url) if url else None
    if json_out:
        emit_json(data)
        return
    s, res = data["settings"], data["reservation"]
    console.print(f"mode [bold]{s['mode']}[/], RF{s['rf']} (survives {s['rf'] - 1} host "
                  f"loss{'es' if s['rf'] > 2 else ''}), {s['reservation']} reservation; "
                  f"isolation {s['isolation_timeout_s']:g} s, countdown {s['countdown_s']:g} s",
                  highlight=False)
    console.print(table("hosts", ["host", "total MiB", "used MiB", "reserved MiB", "segments"],
                        [[h["name"], h["total_mib"], h["used_mib"], h["reserved_mib"],
                          ", ".join(str(x) for x in h["segments_mib"])]
                         for h in data["hosts"]]))
    console.print(table("VMs", ["vm", "host", "state", "memory MiB", "priority", "protected"],
                        [[v["name"], v["host"], v["state"], v["memory_mib"], v["priority"],
                          "yes" if v["protected"] else f"no ({v['why_not']})"]
                         for v in data["vms"]]))
    if res["kind"] == "none":
        console.print(f"failover (best effort): worst loss needs "
                      f"{res['failover_needed_mib']} MiB, {res['failover_capacity_mib']} MiB "
                      "free now", highlight=False)
    else:
        state = ("[green]kept[/]" if res["ok"]
                 else f"[red]broken: {res['missing_mib']} MiB missing[/]")
        console.print(f"failover: worst loss needs {res['failover_needed_mib']} MiB, reserved "
                      f"{res['failover_capacity_mib']} MiB; guarantee {state} "
                      f"({res['detail']})", highlight=False)
    view = data["leader_view"]
    if view:
        console.print(table("leader's view", ["host", "verdict", "countdown left s"],
                            [[h, v["verdict"], v["remaining_s"] or ""]
                             for h, v in sorted(view["hosts"].items())]))
        for r in view["restarts"][-10:]:
            console.print(f"restarted {r['vm']}: {r['from']} -> {r['to']}", highlight=False)
        for vm, why in sorted(view["failures"].items()):
            err_console.print(f"[yellow]{vm}:[/] {why}", highlight=False)
    for host, error in data["unreachable"].items():
        err_console.print(f"[yellow]warning:[/] host {host} did not answer: {error}",
                          highlight=False)


@app.command(name="set")
def set_(
    mode: Annotated[str | None, typer.Option("--mode", help="default or guarantee.")] = None,
    rf: Annotated[int | None, typer.Option(
        "--rf", help="2 (survive 1 host loss) or 3 (survive 2).")] = None,
    reservation: Annotated[str | None, typer.Option(
        "--reservation", help="host (whole hosts free) or segment (spread).")] = None,
    isolation_timeout_s: Annotated[float | None, typer.Option(
        "--isolation-timeout", help="Seconds without the store before a host fences.")] = None,
    countdown_s: Annotated[float | None, typer.Option(
        "--countdown", help="Seconds after both signals are lost before restarting.")] = None,
    cluster: ClusterOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Change HA settings (only the options given); checked before anything is stored."""
    from ahvlite.controller.ha.config import change_settings

    path, _ = load(cluster)
    new = change_settings(path, mode=mode, rf=rf, reservation=reservation,
                          isolation_timeout_s=isolation_timeout_s, countdown_s=countdown_s)
    if json_out:
        emit_json(new.to_doc())
    else:
        console.print(f"HA: mode {new.mode}, RF{new.rf}, {new.reservation} reservation, "
                      f"isolation {new.isolation_timeout_s:g} s, countdown {new.countdown_s:g} s",
                      highlight=False)
