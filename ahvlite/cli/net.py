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
        rows = [[n["name"], n["vlan"], n["bridge"],
                 (n.get("ipam") or {}).get("subnet", "unmanaged")]
                for n in hosts[0]["networks"]]
        console.print(table("VLAN networks", ["network", "vlan", "bridge", "subnet"], rows))


def render_network(n: dict[str, Any]) -> None:
    console.print(f"[bold]{n['name']}[/]: VLAN {n['vlan']} on {n['bridge']}, "
                  + ("managed" if n["managed"] else "unmanaged (no IPAM)"), highlight=False)
    ipam = n.get("ipam")
    if not ipam:
        return
    opts = [f"subnet {ipam['subnet']}", f"gateway {ipam.get('gateway', '-')}",
            f"dhcp server {n['dhcp_server']}", f"lease {ipam['lease_s']} s"]
    if ipam.get("dns"):
        opts.append("dns " + ", ".join(ipam["dns"]))
    for key in ("domain", "mtu"):
        if ipam.get(key) is not None:
            opts.append(f"{key} {ipam[key]}")
    console.print("  " + ", ".join(opts), highlight=False)
    for p in n["pools"]:
        console.print(f"  pool {p['range']}: {p['used']} of {p['size']} in use",
                      highlight=False)
    rows = [[a["ip"], a["mac"], a["vm"], a["host"] or ("(none: orphan)" if a["orphan"]
                                                       else "?")]
            for a in n["allocations"]]
    console.print(table(f"Allocations on {n['name']}", ["address", "mac", "vm", "host"],
                        rows))
    for h, e in n["unreachable"].items():
        err_console.print(f"[yellow]warning:[/] {h} did not answer ({e}): hosts of its "
                          "VMs unknown", highlight=False)


@app.command()
def show(name: Annotated[str | None, typer.Argument(
             help="A network (its settings and allocations) or a host (default: all "
                  "hosts).")] = None,
         host: Annotated[str | None, typer.Option("--host", help="Only this host (even "
                                                  "if a network has its name).")] = None,
         json_out: JsonOpt = False) -> None:
    """Bridges, bond mode, members with link state, active member, LACP, VM ports; or
    one network's subnet, options, pool use and allocations (VM, MAC, address, host)."""
    if name is not None and host is None:
        networks = get("/v1/cluster").get("network", {}).get("networks", [])
        if any(n.get("name") == name for n in networks):
            with progress(not json_out, f"reading network {name}"):
                net = get(f"/v1/networks/{name}/ipam")
            if json_out:
                emit_json(net)
            else:
                render_network(net)
            return
        host = name
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


PoolOpt = Annotated[list[str] | None, typer.Option(
    "--pool", help="Addresses IPAM hands out, A-B (both included). Repeat.")]
DnsOpt = Annotated[list[str] | None, typer.Option("--dns", help="DNS server for guests. "
                                                  "Repeat (up to 4).")]
GatewayOpt = Annotated[str | None, typer.Option("--gateway", help="Router for guests.")]
DomainOpt = Annotated[str | None, typer.Option("--domain", help="DNS domain for guests.")]
MtuOpt = Annotated[int | None, typer.Option("--mtu", help="MTU for guests (576-9216).")]
LeaseOpt = Annotated[int | None, typer.Option("--lease-s", help="DHCP lease time, s.")]
ServerOpt = Annotated[str | None, typer.Option(
    "--dhcp-server", help="The DHCP server's address (default: the last usable one).")]


def _ipam(subnet: str | None, gateway: str | None, pool: list[str] | None,
          dns: list[str] | None, domain: str | None, mtu: int | None, lease_s: int | None,
          dhcp_server: str | None) -> dict[str, Any]:
    """The IpamSpec fields given on the command line (pools parsed here)."""
    from ahvlite.spec.network import parse_pool

    values: dict[str, Any] = {
        "subnet": subnet, "gateway": gateway, "dhcp_server": dhcp_server,
        "pools": [parse_pool(p).model_dump(mode="json") for p in pool] if pool else None,
        "dns": list(dns) if dns else None, "domain": domain, "mtu": mtu, "lease_s": lease_s}
    return {k: v for k, v in values.items() if v is not None}


@app.command()
def create(name: Annotated[str, typer.Argument(help="Network name.")],
           vlan: Annotated[int, typer.Option("--vlan", help="VLAN id (1-4094).")],
           bridge: Annotated[str, typer.Option("--bridge", help="OVS bridge.")] = "br0",
           subnet: Annotated[str | None, typer.Option(
               "--subnet", help="CIDR: makes the network managed (IPAM and DHCP by the "
                                "cluster).")] = None,
           gateway: GatewayOpt = None, pool: PoolOpt = None, dns: DnsOpt = None,
           domain: DomainOpt = None, mtu: MtuOpt = None, lease_s: LeaseOpt = None,
           dhcp_server: ServerOpt = None,
           json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Add a VLAN network to the cluster; with --subnet a managed one."""
    from ahvlite.errors import InvalidSpec

    ipam = _ipam(subnet, gateway, pool, dns, domain, mtu, lease_s, dhcp_server)
    if ipam and subnet is None:
        flag = next(iter(ipam)).replace("_", "-")
        raise InvalidSpec("--subnet", None, f"a subnet (CIDR) with --{flag}",
                          hint="without --subnet the network is unmanaged and takes no "
                               "IPAM options")
    params: dict[str, Any] = {"name": name, "vlan": vlan, "bridge": bridge}
    if ipam:
        params["ipam"] = ipam
    net = run_task("net.create", params, json_out=json_out, wait=wait,
                   title=f"creating network {name}")
    if net is None:
        return
    if json_out:
        emit_json(net)
    else:
        what = f", managed: {net['ipam']['subnet']}" if net.get("ipam") else ""
        console.print(f"network {name}: VLAN {vlan} on {bridge}{what}", highlight=False)


@app.command()
def update(name: Annotated[str, typer.Argument(help="Network name.")],
           subnet: Annotated[str | None, typer.Option(
               "--subnet", help="CIDR (only while no address is allocated).")] = None,
           gateway: GatewayOpt = None, pool: PoolOpt = None, dns: DnsOpt = None,
           domain: DomainOpt = None, mtu: MtuOpt = None, lease_s: LeaseOpt = None,
           dhcp_server: ServerOpt = None,
           clear: Annotated[list[str] | None, typer.Option(
               "--clear", help="Back to the default: gateway, dhcp_server, dns, domain, "
                               "mtu. Repeat.")] = None,
           json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Change a network's IPAM settings (--pool and --dns replace the whole list)."""
    changes = _ipam(subnet, gateway, pool, dns, domain, mtu, lease_s, dhcp_server)
    done = run_task("net.update", {"name": name, "changes": changes, "clear": clear or []},
                    json_out=json_out, wait=wait, title=f"changing network {name}")
    if done is None:
        return
    _warn(done.pop("warnings", []), json_out)
    if json_out:
        emit_json(done)
    else:
        pools = ", ".join(f"{p['start']}-{p['end']}" for p in done["ipam"]["pools"])
        console.print(f"network {name}: {done['ipam']['subnet']}, pools {pools}",
                      highlight=False)


@app.command()
def delete(name: Annotated[str, typer.Argument(help="Network name.")],
           json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Remove a VLAN network from the cluster (refused while it has allocations)."""
    done = run_task("net.delete", {"name": name}, json_out=json_out, wait=wait,
                    title=f"deleting network {name}")
    if done is None:
        return
    if json_out:
        emit_json({"deleted": name})
    else:
        console.print(f"network {name} deleted", highlight=False)


@app.command()
def release(name: Annotated[str, typer.Argument(help="Network name.")],
            ip: Annotated[str, typer.Argument(help="The allocated address.")],
            force: Annotated[bool, typer.Option(
                "--force", help="Also when a host does not answer.")] = False,
            json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Free an address whose VM is gone (an orphan in `net show NETWORK`)."""
    done = run_task("net.release", {"name": name, "ip": ip, "force": force},
                    json_out=json_out, wait=wait, title=f"freeing {ip} on {name}")
    if done is None:
        return
    if json_out:
        emit_json(done)
    else:
        freed = done["released"]
        console.print(f"freed {ip} on {name}" + (f" (was {freed['vm']}, {freed['mac']})"
                                                 if freed else " (it was free)"),
                      highlight=False)


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
