"""``ahvlite ha``: VM high availability settings, reservations and protected VMs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ahvlite.cli import api
from ahvlite.cli.output import console, emit_json, err_console, progress, table

app = typer.Typer(no_args_is_help=True,
                  help="VM high availability: mode, reservations, protected VMs.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command()
def show(json_out: JsonOpt = False) -> None:
    """Mode, reservation per host, protected VMs and failover capacity, and the
    leader's view (host verdicts, restarts, failures)."""
    with progress(not json_out, "reading hosts and VMs"):
        data = api.get("/v1/ha")
    if json_out:
        emit_json(data)
        return
    s, res = data["settings"], data["reservation"]
    console.print(f"mode [bold]{s['mode']}[/], RF{s['rf']} (survives {s['rf'] - 1} host "
                  f"loss{'es' if s['rf'] > 2 else ''}), {s['reservation']} reservation; "
                  f"lease {s['lease_s']:g} s, watchdog {s['watchdog_s']:g} s, margin "
                  f"{s['margin_s']:g} s",
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
        console.print(table("leader's view", ["host", "verdict", "libvirt",
                                              "heartbeat still s", "restart in s",
                                              "last fence"],
                            [[h, v["verdict"], "up" if v.get("libvirt") else "lost",
                              v.get("heartbeat_still_s", ""),
                              v["remaining_s"] if v["verdict"] == "suspect" else "",
                              _last_fence(v.get("fences") or [])]
                             for h, v in sorted(view["hosts"].items())]))
        for t in view.get("twins_resolved", [])[-5:]:
            err_console.print(f"[red]{t['vm']} ran twice:[/] kept on {t['kept']}, powered "
                              f"off on {t['destroyed']}", highlight=False)
        for r in view["restarts"][-10:]:
            console.print(f"restarted {r['vm']}: {r['from']} -> {r['to']}", highlight=False)
        for vm, why in sorted(view["failures"].items()):
            err_console.print(f"[yellow]{vm}:[/] {why}", highlight=False)
    for host, error in data["unreachable"].items():
        err_console.print(f"[yellow]warning:[/] host {host} did not answer: {error}",
                          highlight=False)


def _last_fence(fences: list[dict[str, Any]]) -> str:
    if not fences:
        return ""
    f = fences[-1]
    return f"{f.get('vm')} {'off' if f.get('ok') else 'NOT confirmed'}"


@app.command(name="set")
def set_(
    mode: Annotated[str | None, typer.Option("--mode", help="default or guarantee.")] = None,
    rf: Annotated[int | None, typer.Option(
        "--rf", help="2 (survive 1 host loss) or 3 (survive 2).")] = None,
    reservation: Annotated[str | None, typer.Option(
        "--reservation", help="host (whole hosts free) or segment (spread).")] = None,
    lease_s: Annotated[float | None, typer.Option(
        "--lease", help="Seconds a host agent keeps its VMs after its last acknowledged "
        "heartbeat (applies when agents restart).")] = None,
    watchdog_s: Annotated[float | None, typer.Option(
        "--watchdog", help="Host watchdog timeout in seconds (applies when agents "
        "restart).")] = None,
    margin_s: Annotated[float | None, typer.Option(
        "--margin", help="Extra seconds the leader waits before restarting.")] = None,
    wait: api.WaitOpt = True,
    json_out: JsonOpt = False,
) -> None:
    """Change HA settings (only the options given); checked before anything is stored:
    a guarantee the running VMs already break is refused with the missing MiB."""
    from ahvlite.controller.ha.settings import HaSettings
    from ahvlite.errors import InvalidSpec

    changes = {k: v for k, v in (("mode", mode), ("rf", rf), ("reservation", reservation),
                                 ("lease_s", lease_s), ("watchdog_s", watchdog_s),
                                 ("margin_s", margin_s)) if v is not None}
    if not changes:
        raise InvalidSpec("options", None, "at least one of --mode, --rf, --reservation, "
                                           "--lease, --watchdog, --margin")
    for name, value in changes.items():  # a fast error here; the leader checks again
        HaSettings().with_changes(**{name: value})
    doc = api.run_task("ha.set", changes, json_out=json_out, wait=wait,
                       title="changing the HA settings")
    if doc is None:
        return
    if json_out:
        emit_json(doc)
    else:
        new = HaSettings.from_doc(doc)
        console.print(f"HA: mode {new.mode}, RF{new.rf}, {new.reservation} reservation, "
                      f"lease {new.lease_s:g} s, watchdog {new.watchdog_s:g} s, restart "
                      f"after {new.restart_after_s:g} s without a heartbeat",
                      highlight=False)
