"""``ahvlite lab``: a multi-host KVM lab on this machine, built from namespaces."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from ahvlite.cli.output import console, emit_json, progress, table
from ahvlite.errors import InvalidSpec
from ahvlite.lab import demo as lab_demo
from ahvlite.lab import lab
from ahvlite.spec.errors import build
from ahvlite.spec.lab import LabSpec

app = typer.Typer(no_args_is_help=True, help="Build, inspect and remove a local lab.")

NameOpt = Annotated[str, typer.Option("--name", help="Lab name (a-z0-9, at most 8).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _segment(bridge: str | None, main: str) -> str:
    if bridge is None:
        return "(no uplinks)"
    return "main" if bridge == main else bridge


def _show_status(st: dict[str, Any]) -> None:
    console.print(f"lab [bold]{st['name']}[/] ({st['phase']}): subnet {st['subnet']} on "
                  f"{st['bridge']}, domain type [bold]{st['domain_type']}[/]"
                  f" — {st['domain_type_reason']}")
    rows = [[h["name"], h["hostname"], h["address"], "up" if h["up"] else "DOWN",
             _segment(h["segment"], st["bridge"]), h["libvirt_uri"].split("?")[0]]
            for h in st["hosts"]]
    console.print(table("hosts", ["host", "hostname", "address", "daemons", "segment",
                                  "libvirt"], rows))
    console.print(f"cluster file: {st['cluster_file']}")
    console.print(f"shared pool:  {st['pool']['name']} at {st['pool']['path']}"
                  + (" (VM disks over iSCSI: `ahvlite storage show`)"
                     if st.get("storage") == "iscsi" else ""))
    if st["timings_s"]:
        console.print("timings (s): " + ", ".join(f"{k} {v}" for k, v in st["timings_s"].items()))


@app.command()
def up(
    hosts: Annotated[int, typer.Option("--hosts", help="Number of hosts (1-16).")] = 3,
    name: NameOpt = "lab",
    subnet: Annotated[str | None, typer.Option(
        "--subnet", help="Private IPv4 subnet for management (default from the name).")] = None,
    zk: Annotated[bool, typer.Option(
        "--zk/--no-zk", help="A ZooKeeper ensemble, one member in each of the first 3 "
        "hosts.")] = True,
    controllers: Annotated[bool, typer.Option(
        "--controllers/--no-controllers", help="On every host a controller with its API, "
        "a host agent and a watchdog, run as their systemd units run them (implies "
        "--zk).")] = True,
    storage: Annotated[str, typer.Option(
        "--storage", help="dir (guests open the shared files) or iscsi (tgtd and the "
                          "redirector on every host; disks are iSCSI LUNs).")] = "dir",
    json_out: JsonOpt = False,
) -> None:
    """Build a lab of N hosts (each with OVS, libvirt over TLS and sshd)."""
    spec = build(LabSpec, name=name, hosts=hosts, subnet=subnet, zk=zk or controllers,
                 controllers=controllers, storage=storage)
    with progress(not json_out, f"lab {name}: starting") as report:
        st = lab.up(spec, report=report)
    if json_out:
        emit_json(st)
    else:
        _show_status(st)
        console.print("point the CLI at it:", lab.env_line(name), soft_wrap=True)


@app.command()
def down(
    name: NameOpt = "lab",
    keep: Annotated[bool, typer.Option("--keep", help="Keep state dirs and logs.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove everything the lab created (processes by PID, namespaces, links)."""
    with progress(not json_out, f"lab {name}: removing"):
        result = lab.down(name, keep=keep)
    if json_out:
        emit_json(result)
    else:
        r = result["removed"]
        console.print(f"lab {name} removed: {len(r['processes'])} processes, "
                      f"{len(r['netns'])} namespaces, {len(r['links'])} links")


@app.command()
def status(name: NameOpt = "lab", json_out: JsonOpt = False) -> None:
    """Show a lab: hosts, addresses, daemons, domain type, cluster file."""
    st = lab.status(name)
    if json_out:
        emit_json(st)
    else:
        _show_status(st)


@app.command(name="list")
def list_(json_out: JsonOpt = False) -> None:
    """List the labs on this machine."""
    names = lab.list_labs()
    if json_out:
        emit_json(names)
    else:
        for n in names:
            console.print(n)


@app.command(name="exec", context_settings={"allow_extra_args": True,
                                            "ignore_unknown_options": True})
def exec_(
    host: Annotated[str, typer.Argument(help="Lab host, e.g. h1.")],
    command: Annotated[list[str] | None, typer.Argument(help="Command (after --).")] = None,
    name: NameOpt = "lab",
) -> None:
    """Run a command inside a lab host's network, mount and UTS namespaces."""
    argv = lab.exec_argv(name, host, list(command or []))
    os.execvp(argv[0], argv)


@app.command()
def env(name: NameOpt = "lab") -> None:
    """Print the exports that point the CLI at the lab's API, as its admin."""
    typer.echo(lab.env_line(name))


@app.command()
def demo(
    name: NameOpt = "lab",
    json_out: JsonOpt = False,
) -> None:
    """Boot one guest per host from the disk image and ping guest to guest across hosts."""
    with progress(not json_out, "demo: booting guests") as report:
        result = lab_demo.run(name, report=report)
    if json_out:
        emit_json(result)
        return
    rows = [[g["name"], g["host"], g["address"], g["state"], g["boot_s"]]
            for g in result["guests"]]
    console.print(table("guests", ["guest", "host", "address", "state", "boot s"], rows))
    rows = [[p["from"], p["to"], "ok" if p["ok"] else "FAILED", p["detail"]]
            for p in result["pings"]]
    console.print(table("guest-to-guest ping across hosts", ["from", "to", "result", ""], rows))
    from ahvlite.cli.net import render_show

    console.print("[bold]ahvlite net show[/]")
    render_show(result["net_show"])
    if not result["ok"]:
        raise typer.Exit(1)


@app.command(name="guest-image")
def guest_image(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if current.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Build (or reuse) the lab's test guest: kernel, busybox initramfs, qcow2 disk."""
    from ahvlite.lab.guest import build_guest
    from ahvlite.lab.paths import cache_dir

    with progress(not json_out, "building the lab guest from Debian packages"):
        images = build_guest(cache_dir() / "guest", force=force)
    result = {"kernel": str(images.kernel), "initrd": str(images.initrd),
              "disk": str(images.disk)}
    if json_out:
        emit_json(result)
    else:
        for k, v in result.items():
            console.print(f"{k:7} {v}")


@app.command()
def daemon(
    action: Annotated[str, typer.Argument(help="stop or start")],
    host: Annotated[str, typer.Argument(help="Lab host, e.g. h2.")],
    role: Annotated[str, typer.Argument(
        help="ovsdb-server, ovs-vswitchd, virtlogd, virtlockd, libvirtd, sshd; with "
             "--storage iscsi also storage (tgtd: killed at once) and redirector")],
    name: NameOpt = "lab",
    json_out: JsonOpt = False,
) -> None:
    """Stop or start one daemon of a lab host by its recorded PID (failure drills)."""
    if action not in ("stop", "start"):
        raise InvalidSpec("action", action, "stop or start")
    pid = (lab.stop_daemon if action == "stop" else lab.start_daemon)(name, host, role)
    if json_out:
        emit_json({"host": host, "role": role, "action": action, "pid": pid})
    else:
        console.print(f"{role} on {host}: {action} (PID {pid})")


@app.command()
def kill(
    host: Annotated[str | None, typer.Argument(
        help="Lab host, e.g. h2 (with --watch-ha: default a non-leader host with VMs).")]
        = None,
    name: NameOpt = "lab",
    watch_ha: Annotated[bool, typer.Option(
        "--watch-ha", help="Then time HA: each VM running elsewhere, and answering ping.")]
        = False,
    timeout_s: Annotated[float, typer.Option(
        "--timeout-s", help="With --watch-ha: give up after this long.", min=10)] = 180,
    json_out: JsonOpt = False,
) -> None:
    """Power loss: SIGKILL every daemon and QEMU of a lab host (by recorded PID/netns)."""
    from ahvlite.lab import drills, faults

    if watch_ha:
        with progress(not json_out, "HA drill") as report:
            result = drills.kill_and_watch(name, host, timeout_s=timeout_s, report=report)
        if json_out:
            emit_json(result)
            return
        rows = [[v["name"], v["to"], f"{v['restarted_s']} s",
                 f"{v['answers_s']} s" if v["answers_s"] is not None else "(no address)"]
                for v in result["vms"]]
        console.print(table(f"HA after {result['host']} lost power", [
            "VM", "restarted on", "running after", "answers ping after"], rows))
        return
    if host is None:
        raise InvalidSpec("host", None, "a lab host name (or --watch-ha to pick one)")
    result = faults.kill(name, host)
    if json_out:
        emit_json(result)
    else:
        console.print(f"{host}: killed {len(result['killed'])} processes "
                      f"({', '.join(result['killed'])})", highlight=False)


@app.command(name="power-on")
def power_on(
    host: Annotated[str, typer.Argument(help="Lab host `lab kill` stopped, e.g. h2.")],
    name: NameOpt = "lab",
    json_out: JsonOpt = False,
) -> None:
    """Power a killed lab host back on: its daemons start again (its VMs stay off; HA
    decides about them)."""
    from ahvlite.lab import faults

    result = faults.power_on(name, host)
    if json_out:
        emit_json(result)
    else:
        console.print(f"{host}: started {', '.join(result['started'])}", highlight=False)


@app.command()
def partition(
    hosts: Annotated[list[str], typer.Argument(
        help="Lab hosts to split off together, e.g. h3 h4.")],
    name: NameOpt = "lab",
    json_out: JsonOpt = False,
) -> None:
    """Split hosts off as a group on a new segment: they keep running and reach each
    other, nobody else reaches them (nor this machine) until `lab heal`. A host already
    partitioned moves to the new group."""
    from ahvlite.lab import faults

    result = faults.partition(name, *hosts)
    if json_out:
        emit_json(result)
        return
    console.print(f"{', '.join(result['hosts'])}: on segment {result['segment']}, cut off "
                  "from the other hosts", highlight=False)
    if result["removed_segments"]:
        console.print(f"removed empty segments: {', '.join(result['removed_segments'])}")


@app.command()
def heal(
    hosts: Annotated[list[str] | None, typer.Argument(
        help="Lab hosts to put back on the main segment (default: all).")] = None,
    name: NameOpt = "lab",
    json_out: JsonOpt = False,
) -> None:
    """Put partitioned hosts back on the main segment; remove segments left empty."""
    from ahvlite.lab import faults

    result = faults.heal(name, *(hosts or []))
    if json_out:
        emit_json(result)
        return
    console.print(f"{', '.join(result['hosts'])}: on the main segment "
                  f"{result['segment']}", highlight=False)
    if result["removed_segments"]:
        console.print(f"removed empty segments: {', '.join(result['removed_segments'])}")


uplink_app = typer.Typer(no_args_is_help=True, help=(
    "A DHCP server on the lab's uplink (the site's own): dnsmasq with a dynamic range "
    "on VLAN 10 (10.10.0.10-19) and VLAN 20 (10.20.0.10-19), behind a trunk port on "
    "the lab bridge."))
app.add_typer(uplink_app, name="uplink-dhcp")


@uplink_app.command(name="start")
def uplink_start(name: NameOpt = "lab", json_out: JsonOpt = False) -> None:
    """Start the uplink DHCP server on a running lab (`lab down` ends it too)."""
    from ahvlite.lab import uplinkdhcp

    result = uplinkdhcp.start(name)
    if json_out:
        emit_json(result)
    else:
        console.print(f"uplink DHCP on {result['bridge_port']}: leases in "
                      f"{result['lease_file']}, log {result['log_file']}", highlight=False)


@uplink_app.command(name="stop")
def uplink_stop(name: NameOpt = "lab", json_out: JsonOpt = False) -> None:
    """Stop the uplink DHCP server and remove its namespaces and port."""
    from ahvlite.lab import uplinkdhcp

    result = uplinkdhcp.stop(name)
    if json_out:
        emit_json(result)
    else:
        console.print(f"stopped {', '.join(result['stopped']) or 'nothing'}", highlight=False)


@uplink_app.command(name="show")
def uplink_show(name: NameOpt = "lab", json_out: JsonOpt = False) -> None:
    """Whether it runs, and its leases."""
    from ahvlite.lab import uplinkdhcp

    result = uplinkdhcp.status(name)
    if json_out:
        emit_json(result)
        return
    console.print(f"uplink DHCP: {'running' if result['running'] else 'not running'}")
    console.print(table("leases", ["mac", "ip", "hostname"],
                        [[x["mac"], x["ip"], x["hostname"]] for x in result["leases"]]))
