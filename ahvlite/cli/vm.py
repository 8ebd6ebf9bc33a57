"""``ahvlite vm``: create, power, list, show, console, delete, settings, disk/NIC changes,
CPU check, migrate: reads and tasks through the API (see ``ahvlite.cli.api``).

Input is checked here first for an instant, clear error (the spec is built here); the
leader checks again before it acts.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from ahvlite.cli import migrate as migrate_cli
from ahvlite.cli.api import WaitOpt, get, run_task
from ahvlite.cli.output import console, emit_json, err_console, table
from ahvlite.errors import InvalidSpec
from ahvlite.spec.errors import build
from ahvlite.spec.vm import BootSpec, DiskSpec, VmSpec, parse_nic, parse_size_mib

app = typer.Typer(no_args_is_help=True,
                  help="VMs: create, start, shutdown, stop, reboot, delete, list, show, "
                       "update, console, disk add, nic add/remove, cpu-check, migrate.")
disk_app = typer.Typer(no_args_is_help=True, help="A VM's disks.")
nic_app = typer.Typer(no_args_is_help=True, help="A VM's NICs.")
app.add_typer(disk_app, name="disk")
app.add_typer(nic_app, name="nic")
app.command(name="migrate")(migrate_cli.migrate)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NameArg = Annotated[str, typer.Argument(help="VM name.")]


def parse_disk(text: str, bus: str = "scsi", full: bool = False) -> DiskSpec:
    """``SIZE`` (10G, 512M) or ``IMAGE``, optionally ``,bus=virtio``."""
    source, *opts = text.split(",")
    for opt in opts:
        key, _, val = opt.partition("=")
        if key == "bus":
            bus = val
        elif key == "full":
            full = val in ("", "yes", "true", "1")
        else:
            raise InvalidSpec("disk", text, "SIZE or IMAGE, then ,bus=BUS or ,full")
    if source[:1].isdigit():
        return build(DiskSpec, size_mib=parse_size_mib(source), bus=bus, full_clone=full)
    return build(DiskSpec, image=source, bus=bus, full_clone=full)


def render_dict(d: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(d)
        return
    for key in ("name", "uuid", "host", "state", "vcpus", "memory_mib", "current_memory_mib",
                "overcommit", "firmware", "vtpm", "genid", "ips", "labels", "template"):
        console.print(f"[bold]{key:19}[/] {escape(str(d.get(key)))}", highlight=False)
    for disk in d.get("disks", []):
        console.print(f"[bold]disk {escape(str(disk['name'])):14}[/] "
                      + escape(f"{disk['dev']} ({disk['bus']}) {disk['path']}"),
                      highlight=False)
    for nic in d.get("nics", []):
        vlans = ",".join(str(v) for v in nic["vlans"]) or "untagged"
        console.print(f"[bold]nic {nic['mac']:15}[/] "
                      + escape(f"{nic['network']} on {nic['bridge']} {nic['mode']} {vlans}"
                               + (f" {nic['ip']}" if nic.get("ip") else "")),
                      highlight=False)


def _task(kind: str, params: dict[str, Any], *, json_out: bool, wait: bool,
          title: str) -> None:
    """Run a task that answers with a VM and show the VM (or, without wait, the id)."""
    info = run_task(kind, params, json_out=json_out, wait=wait, title=title)
    if info is not None:
        render_dict(info, json_out)


def _pairs(option: str, items: list[str] | None) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidSpec(option, item, "KEY=VALUE")
        out.append((key, value))
    return out


@app.command()
def create(
    name: NameArg,
    cpus: Annotated[int, typer.Option("--cpus", help="vCPUs.")] = 1,
    memory_mib: Annotated[int, typer.Option("--memory-mib", help="Memory in MiB.")] = 1024,
    disk: Annotated[list[str] | None, typer.Option(
        "--disk", help="SIZE (10G) or IMAGE, optionally ,bus=scsi|virtio|sata|ide or "
                       ",full (copy the image). Repeat for more disks.")] = None,
    nic: Annotated[list[str] | None, typer.Option(
        "--nic", help="NETWORK, NETWORK:trunk=10,20, NETWORK:mac=MAC or NETWORK:ip=ADDRESS "
        "(a managed network's address; options joined by ';'). Repeat.")] = None,
    uefi: Annotated[bool, typer.Option("--uefi", help="Boot with UEFI (OVMF).")] = False,
    secure_boot: Annotated[bool, typer.Option("--secure-boot",
                                              help="UEFI secure boot.")] = False,
    vtpm: Annotated[bool, typer.Option("--vtpm", help="A TPM 2.0 (swtpm).")] = False,
    overcommit: Annotated[bool, typer.Option("--overcommit",
                                             help="Memory overcommit (balloon).")] = False,
    host: Annotated[str | None, typer.Option("--host", help="Place on this host.")] = None,
    start: Annotated[bool, typer.Option("--start", help="Start it too.")] = False,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE.")] = None,
    fw_cfg: Annotated[list[str] | None, typer.Option(
        "--fw-cfg", help="opt/KEY=VALUE handed to the guest through QEMU fw_cfg.")] = None,
    kernel: Annotated[str | None, typer.Option(help="Direct kernel boot: host path.")] = None,
    initrd: Annotated[str | None, typer.Option(help="initrd for --kernel.")] = None,
    cmdline: Annotated[str, typer.Option(help="Kernel command line for --kernel.")] = "",
    uuid: Annotated[str | None, typer.Option(help="UUID (default: derived from the "
                                                  "task).")] = None,
    json_out: JsonOpt = False,
    wait: WaitOpt = True,
) -> None:
    """Create a VM (placed by the scheduler unless --host; with --start, admitted by HA
    guarantee mode first)."""
    values: dict[str, Any] = {
        "name": name, "vcpus": cpus, "memory_mib": memory_mib, "vtpm": vtpm,
        "overcommit": overcommit,
        "disks": [parse_disk(d) for d in disk or []],
        "nics": [parse_nic(n) for n in nic or []],
        "boot": build(BootSpec, firmware="uefi" if uefi or secure_boot else "bios",
                      secure_boot=secure_boot, kernel=kernel, initrd=initrd,
                      cmdline=cmdline),
        "labels": dict(_pairs("label", label)),
        "fw_cfg": dict(_pairs("fw-cfg", fw_cfg)),
        **({"uuid": uuid} if uuid else {}),
    }
    spec = build(VmSpec, **values)
    for warning in spec.warnings():
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    doc = spec.model_dump(mode="json")
    if uuid is None:
        del doc["uuid"]  # the leader derives it from the task id: a re-run finds its VM
    _task("vm.spec.create", {"spec": doc, "host": host, "start": start},
          json_out=json_out, wait=wait, title=f"creating {name}")


@app.command()
def update(
    name: NameArg,
    ha_priority: Annotated[int | None, typer.Option(
        "--ha-priority", help="HA restart priority (higher restarts first).",
        min=-1000, max=1000)] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="Set a label, KEY=VALUE. Repeat.")] = None,
    remove_label: Annotated[list[str] | None, typer.Option(
        "--remove-label", help="Remove the label KEY. Repeat.")] = None,
    json_out: JsonOpt = False, wait: WaitOpt = True,
) -> None:
    """Change a VM's settings kept in its metadata (labels, HA priority)."""
    labels: dict[str, str | None] = dict(_pairs("label", label))
    labels.update({k: None for k in remove_label or []})
    if ha_priority is None and not labels:
        raise InvalidSpec("options", None,
                          "at least one of --ha-priority, --label, --remove-label")
    params: dict[str, Any] = {"name": name, "labels": labels}
    if ha_priority is not None:
        params["ha_priority"] = ha_priority
    _task("vm.update", params, json_out=json_out, wait=wait, title=f"updating {name}")


@app.command(name="list")
def list_(json_out: JsonOpt = False) -> None:
    """Every VM on every host (state, host, vCPUs, memory, IPs when known)."""
    data = get("/v1/vms")
    if json_out:
        emit_json(data["vms"])
        return
    rows = [[v["name"], v["state"], v["host"], v["vcpus"], v["memory_mib"],
             ", ".join(v["ips"])] for v in data["vms"]]
    console.print(table("VMs", ["name", "state", "host", "vcpus", "memory MiB", "IPs"], rows))
    for host, error in data["unreachable"].items():
        err_console.print(f"[yellow]warning:[/] host {host} did not answer: {error}",
                          highlight=False)


@app.command()
def show(name: NameArg, json_out: JsonOpt = False) -> None:
    """One VM: identity, state, host, disks, NICs."""
    render_dict(get(f"/v1/vms/{_path_name(name)}"), json_out)


def _path_name(name: str) -> str:
    """``name`` checked before it goes into a URL path (one clear error, no odd path)."""
    from ahvlite.spec.vm import check_name

    return check_name("name", name)


@app.command()
def start(name: NameArg, json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Power on (in HA guarantee mode only if the reservation still holds)."""
    _task("vm.lifecycle", {"action": "start", "name": name}, json_out=json_out,
          wait=wait, title=f"starting {name}")


@app.command()
def shutdown(
    name: NameArg,
    timeout_s: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 60,
    force: Annotated[bool, typer.Option("--force", help="Power off after the timeout.")]
    = False,
    json_out: JsonOpt = False, wait: WaitOpt = True,
) -> None:
    """ACPI shutdown; waits up to --timeout, then powers off only with --force."""
    _task("vm.lifecycle", {"action": "shutdown", "name": name, "timeout_s": timeout_s,
                           "force": force},
          json_out=json_out, wait=wait, title=f"shutting down {name}")


@app.command()
def stop(name: NameArg,
         force: Annotated[bool, typer.Option("--force", help="Required: pull the plug.")]
         = False,
         json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Power off at once, without asking the guest (needs --force)."""
    if not force:
        raise InvalidSpec("force", False, "--force: stop pulls the plug without asking "
                          "the guest", hint="`ahvlite vm shutdown` asks the guest first")
    _task("vm.lifecycle", {"action": "stop", "name": name, "force": True},
          json_out=json_out, wait=wait, title=f"stopping {name}")


@app.command()
def reboot(name: NameArg, json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """ACPI reboot."""
    _task("vm.lifecycle", {"action": "reboot", "name": name}, json_out=json_out,
          wait=wait, title=f"rebooting {name}")


@app.command()
def delete(name: NameArg,
           force: Annotated[bool, typer.Option("--force", help="Also when running.")]
           = False,
           json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Remove the VM with its volumes, NVRAM and TPM state."""
    result = run_task("vm.lifecycle", {"action": "delete", "name": name, "force": force},
                      json_out=json_out, wait=wait, title=f"deleting {name}")
    if result is None:
        return
    if json_out:
        emit_json(result)
        return
    console.print(f"deleted {name} from {result['host']} "
                  f"(volumes: {', '.join(result['deleted_volumes']) or 'none'})",
                  highlight=False, markup=False)


@app.command(name="console")
def console_(
    name: NameArg,
    command: Annotated[str | None, typer.Option(
        "--command", "-c", help="Run this shell command on the serial console and print "
                                "its output (exit status: the command's).")] = None,
    timeout_s: Annotated[float, typer.Option("--timeout", help="For --command.")] = 30,
    json_out: JsonOpt = False,
) -> None:
    """Run a command on a VM's serial console (the leader runs it as a task)."""
    if command is None:
        from ahvlite.errors import Unsupported

        raise Unsupported(
            "an interactive console is not served through the API yet",
            hint="use --command CMD to run one command and see its output; for a "
                 "terminal, `virsh -c qemu:///system console NAME` on the VM's host")
    result = run_task("vm.console.run", {"name": name, "command": command,
                                         "timeout_s": timeout_s},
                      json_out=json_out, title=f"running a command on {name}")
    assert result is not None
    if json_out:
        emit_json({"name": name, "exit_status": result["exit_status"],
                   "output": result["output"]})
    else:
        typer.echo(result["output"])
    raise typer.Exit(result["exit_status"])


@disk_app.command(name="add")
def disk_add(
    name: NameArg,
    source: Annotated[str, typer.Argument(help="SIZE (10G) or IMAGE.")],
    bus: Annotated[str, typer.Option(help="scsi, virtio, sata or ide.")] = "scsi",
    full: Annotated[bool, typer.Option("--full", help="Copy the image.")] = False,
    disk_name: Annotated[str | None, typer.Option("--name", help="Disk name.")] = None,
    json_out: JsonOpt = False, wait: WaitOpt = True,
) -> None:
    """Add a disk; hot-plugged when the VM runs."""
    disk = parse_disk(source, bus=bus, full=full)
    if disk_name:
        disk = build(DiskSpec, **{**disk.model_dump(exclude_none=True), "name": disk_name})
    _task("vm.disk.add", {"name": name, "disk": disk.model_dump(mode="json",
                                                                exclude_none=True)},
          json_out=json_out, wait=wait, title=f"adding a disk to {name}")


@nic_app.command(name="add")
def nic_add(name: NameArg,
            nic: Annotated[str, typer.Argument(
                help="NETWORK[:OPTION[;OPTION]], OPTION trunk=10,20, mac=MAC or "
                     "ip=ADDRESS")],
            json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Add a NIC; hot-plugged when the VM runs."""
    spec = parse_nic(nic)
    _task("vm.nic.add", {"name": name, "nic": spec.model_dump(mode="json", exclude_none=True)},
          json_out=json_out, wait=wait, title=f"adding a NIC to {name}")


@nic_app.command(name="remove")
def nic_remove(name: NameArg, mac: Annotated[str, typer.Argument(help="The NIC's MAC.")],
               json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Remove a NIC (hot-unplugged when the VM runs)."""
    _task("vm.nic.remove", {"name": name, "mac": mac}, json_out=json_out, wait=wait,
          title=f"removing NIC {mac} from {name}")


@app.command(name="cpu-check")
def cpu_check(name: NameArg, json_out: JsonOpt = False) -> None:
    """Which hosts can run the VM's CPU (compareHypervisorCPU), what the others lack."""
    data = get(f"/v1/vms/{_path_name(name)}/cpu-check")
    if json_out:
        emit_json(data)
        return
    console.print(f"{name} ({data['host']}): CPU {data['cpu']['model']}", highlight=False,
                  markup=False)
    rows = [[h, r["result"], ", ".join(r["missing"]) or ("" if r["compatible"]
                                                          else r["message"] or "")]
            for h, r in data["hosts"].items()]
    console.print(table(f"hosts for {name}", ["host", "result", "missing"], rows))
