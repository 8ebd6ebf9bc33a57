"""``ahvlite net``: host networking (OVS br0 + bond, VLAN networks, virbr0).

Through the API: ``show`` and the ``--dry-run`` plans are reads (a controller reaches
the hosts' OVSDB itself); ``apply``, ``create``, ``delete`` and ``bond set`` are tasks
the leader runs (spec changes by compare-and-set, one OVSDB transaction per host).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ahvlite.cli.api import WaitOpt, get, run_task
from ahvlite.cli.output import console, emit_json, err_console, progress, table

app = typer.Typer(no_args_is_help=True,
                  help="Host networking: bridges, uplink bonds, VLAN networks, virbr0.")
bond_app = typer.Typer(no_args_is_help=True, help="Uplink bonds.")
app.add_typer(bond_app, name="bond")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def render_show(hosts: list[dict[str, Any]]) -> None:
    for h in hosts:
        console.print(f"[bold]{h['host']}[/]", highlight=False)
        for br in h["bridges"]:
            for b in br["bonds"]:
                members = ", ".join(f"{m['name']} ({m['link_state'] or '?'})"
                                    + (" ACTIVE" if m["name"] == b["active_member"] else "")
                                    for m in b["members"])
                lacp = b["lacp"] + (" +fallback-ab" if b["lacp_fallback_ab"] else "")
                console.print(f"  {br['name']} ({br['datapath_type']}): bond {b['name']} "
                              f"{b['mode']}, lacp {lacp}, members {members}", highlight=False)
            if br["vm_ports"]:
                rows = [[p["port"], p["mac"], p["vm_uuid"], p["mode"],
                         p["tag"] if p["mode"] == "access" else
                         f"native {p['tag']} + {p['trunks']}", ", ".join(p["networks"]),
                         p["link_state"]] for p in br["vm_ports"]]
                console.print(table(f"  VM ports on {br['name']}",
                                    ["port", "mac", "vm", "mode", "vlan", "networks", "link"],
                                    rows))
        if h["virbr0"] is not None:
            v = h["virbr0"]
            console.print(f"  virbr0: {'present' if v['exists'] else 'MISSING'} "
                          f"{', '.join(v['addresses'])}", highlight=False)
        for w in h["warnings"]:
            err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if hosts and hosts[0]["networks"]:
        rows = [[n["name"], n["vlan"], n["bridge"]] for n in hosts[0]["networks"]]
        console.print(table("VLAN networks", ["network", "vlan", "bridge"], rows))


@app.command()
def show(host: Annotated[str | None, typer.Argument(help="Host (default: all).")] = None,
         json_out: JsonOpt = False) -> None:
    """Bridges, bond mode, members with link state, active member, LACP, VM ports."""
    with progress(not json_out, "reading host networking"):
        hosts = get("/v1/networks", host=host)
    if json_out:
        emit_json(hosts)
    else:
        render_show(hosts)


def _render_apply(results: list[dict[str, Any]]) -> None:
    for r in results:
        verb = "would do" if r["dry_run"] else "did"
        if not r["steps"]:
            console.print(f"{r['host']}: up to date (no changes)", highlight=False)
            continue
        console.print(f"{r['host']}: {verb} {len(r['steps'])} step(s)", highlight=False)
        for s in r["steps"]:
            console.print(f"  [{s['phase']}] {s['describe']}", highlight=False)


def _warn(warnings: list[str], json_out: bool) -> None:
    for w in warnings if not json_out else []:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False)


@app.command(name="apply")
def apply_(host: Annotated[str | None, typer.Option("--host", help="Only this host.")] = None,
           dry_run: Annotated[bool, typer.Option("--dry-run",
                                                 help="Print the steps, change nothing.")]
           = False,
           json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Make hosts match the cluster's network spec (idempotent)."""
    if dry_run:
        done: dict[str, Any] | None = get("/v1/networks/plan", host=host)
    else:
        params = {"host": host} if host else {}
        done = run_task("net.apply", params, json_out=json_out, wait=wait,
                        title="applying host networking")
    if done is None:
        return
    _warn(done["warnings"], json_out)
    if json_out:
        emit_json(done["results"])
    else:
        _render_apply(done["results"])


@app.command()
def create(name: Annotated[str, typer.Argument(help="Network name.")],
           vlan: Annotated[int, typer.Option("--vlan", help="VLAN id (1-4094).")],
           bridge: Annotated[str, typer.Option("--bridge", help="OVS bridge.")] = "br0",
           json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Add a VLAN network to the cluster."""
    net = run_task("net.create", {"name": name, "vlan": vlan, "bridge": bridge},
                   json_out=json_out, wait=wait, title=f"creating network {name}")
    if net is None:
        return
    if json_out:
        emit_json(net)
    else:
        console.print(f"network {name}: VLAN {vlan} on {bridge}", highlight=False)


@app.command()
def delete(name: Annotated[str, typer.Argument(help="Network name.")],
           json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Remove a VLAN network from the cluster."""
    done = run_task("net.delete", {"name": name}, json_out=json_out, wait=wait,
                    title=f"deleting network {name}")
    if done is None:
        return
    if json_out:
        emit_json({"deleted": name})
    else:
        console.print(f"network {name} deleted", highlight=False)


@bond_app.command(name="set")
def bond_set(
    host: Annotated[str, typer.Argument(help="Host.")],
    mode: Annotated[str | None, typer.Option(
        "--mode", help="active-backup | balance-slb | balance-tcp")] = None,
    members: Annotated[str | None, typer.Option("--members", help="NICs, e.g. eth0,eth1")]
    = None,
    lacp: Annotated[str | None, typer.Option("--lacp", help="active | passive | off")] = None,
    bridge: Annotated[str, typer.Option("--bridge")] = "br0",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the steps only.")] = False,
    json_out: JsonOpt = False, wait: WaitOpt = True,
) -> None:
    """Change a host's uplink bond (recorded in the cluster, then applied)."""
    member_list = [m.strip() for m in members.split(",") if m.strip()] if members else None
    if dry_run:
        done: dict[str, Any] | None = get("/v1/networks/bond-plan", host=host, bridge=bridge,
                                          mode=mode, members=",".join(member_list or [])
                                          or None, lacp=lacp)
    else:
        params: dict[str, Any] = {"host": host, "bridge": bridge}
        for k, v in (("mode", mode), ("members", member_list), ("lacp", lacp)):
            if v is not None:
                params[k] = v
        done = run_task("net.bond.set", params, json_out=json_out, wait=wait,
                        title=f"changing the bond of {host}")
    if done is None:
        return
    _warn(done["warnings"], json_out)
    if json_out:
        emit_json([done["result"]])
    else:
        _render_apply([done["result"]])
