"""``ahvlite vm``: create, power, list, show, console, delete, and disk/NIC changes.

create, start, shutdown, stop, reboot and delete follow the rule for mutating commands:
with a controller store (``--store`` or $AHVLITE_STORE) they submit a task, after the
same input checks as in process, and print its id; otherwise they run here.
"""

from __future__ import annotations

import os
import shutil
import uuid as uuidlib
from pathlib import Path
from typing import Annotated, Any

import typer

from ahvlite.cli import migrate as migrate_cli
from ahvlite.cli.api import WaitOpt as ApiWaitOpt
from ahvlite.cli.context import ENV_VAR, ClusterOpt, load
from ahvlite.cli.controller import StoreOpt
from ahvlite.cli.output import console, emit_json, err_console, progress, table
from ahvlite.cli.task import WaitOpt, configured_store, submit_and_report
from ahvlite.cluster import cpulevel, vms
from ahvlite.errors import MissingDependency
from ahvlite.spec.errors import build
from ahvlite.spec.vm import BootSpec, DiskSpec, VmSpec, parse_nic, parse_size_mib

app = typer.Typer(no_args_is_help=True,
                  help="VMs: create, start, shutdown, stop, reboot, delete, list, show, "
                       "console, disk add, nic add/remove.")
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
            from ahvlite.errors import InvalidSpec
            raise InvalidSpec("disk", text, "SIZE or IMAGE, then ,bus=BUS or ,full")
    if source[:1].isdigit():
        return build(DiskSpec, size_mib=parse_size_mib(source), bus=bus, full_clone=full)
    return build(DiskSpec, image=source, bus=bus, full_clone=full)


def _lifecycle(store: str, action: str, name: str, cluster: Path | None, *, wait: bool,
               json_out: bool, **extra: Any) -> None:
    """Submit a ``vm.lifecycle`` task: it acts on the controller's own cluster; a
    cluster file given here only serves the checks made before submitting."""
    submit_and_report(store, "vm.lifecycle", {"action": action, "name": name, **extra},
                      wait=wait, json_out=json_out, cluster=_cluster_if_any(cluster))


def _cluster_if_any(cluster: Path | None) -> Path | None:
    """Our cluster file when we have one (then task hosts are checked against it)."""
    if cluster is None and not os.environ.get(ENV_VAR):
        return None
    path, _ = load(cluster)
    return path


def render(info: vms.VmInfo, json_out: bool) -> None:
    render_dict(info.to_dict(), json_out)


def render_dict(d: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(d)
        return
    for key in ("name", "uuid", "host", "state", "vcpus", "memory_mib", "current_memory_mib",
                "overcommit", "firmware", "vtpm", "genid", "ips", "labels", "template"):
        console.print(f"[bold]{key:19}[/] {d[key]}", highlight=False)
    for disk in d["disks"]:
        console.print(f"[bold]disk {disk['name']:14}[/] {disk['dev']} ({disk['bus']}) "
                      f"{disk['path']}", highlight=False)
    for nic in d["nics"]:
        vlans = ",".join(str(v) for v in nic["vlans"]) or "untagged"
        console.print(f"[bold]nic {nic['mac']:15}[/] {nic['network']} on {nic['bridge']} "
                      f"{nic['mode']} {vlans}", highlight=False)


@app.command()
def create(
    name: NameArg,
    cpus: Annotated[int, typer.Option("--cpus", help="vCPUs.")] = 1,
    memory_mib: Annotated[int, typer.Option("--memory-mib", help="Memory in MiB.")] = 1024,
    disk: Annotated[list[str] | None, typer.Option(
        "--disk", help="SIZE (10G) or IMAGE, optionally ,bus=scsi|virtio|sata|ide or "
                       ",full (copy the image). Repeat for more disks.")] = None,
    nic: Annotated[list[str] | None, typer.Option(
        "--nic", help="NETWORK, NETWORK:trunk=10,20 or NETWORK:mac=MAC. Repeat.")] = None,
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
    uuid: Annotated[str | None, typer.Option(help="UUID (default: a new one).")] = None,
    cluster: ClusterOpt = None,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    wait: WaitOpt = False,
) -> None:
    """Create a VM (placed on the host with most free memory unless --host)."""
    url = configured_store(store)
    task_cluster = _cluster_if_any(cluster) if url else None
    cspec = None if url else load(cluster)[1]
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
        "uuid": uuid or str(uuidlib.uuid4()),
    }
    spec = build(VmSpec, **values)
    for warning in spec.warnings():
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if start:
        host = _ha_admit(cluster, name, memory_mib=memory_mib, host=host,
                         labels=spec.labels) or host
    if url:
        submit_and_report(url, "vm.spec.create",
                          {"spec": spec.model_dump(mode="json"), "host": host,
                           "start": start}, wait=wait, json_out=json_out,
                          cluster=task_cluster)
        return
    assert cspec is not None
    with progress(not json_out, f"creating {name}") as report:
        info = vms.create_vm(cspec, spec, host=host, start=start, report=report)
    render(info, json_out)


def _ha_admit(cluster: Path | None, name: str, **new_vm: Any) -> str | None:
    """HA admission control (guarantee mode): the host to use, or Conflict saying how
    much memory is missing. Needs the cluster file (where the HA settings live)."""
    if cluster is None and not os.environ.get(ENV_VAR):
        return None
    from ahvlite.controller.ha.inventory import check_power_on

    _, cspec = load(cluster)
    return check_power_on(cspec, name, **new_vm)


@app.command()
def update(
    name: NameArg,
    ha_priority: Annotated[int | None, typer.Option(
        "--ha-priority", help="HA restart priority (higher restarts first).",
        min=-1000, max=1000)] = None,
    cluster: ClusterOpt = None, json_out: JsonOpt = False,
) -> None:
    """Change a VM's settings kept in its metadata (HA priority)."""
    from ahvlite.errors import InvalidSpec
    from ahvlite.spec.labels import HA_PRIORITY_LABEL

    if ha_priority is None:
        raise InvalidSpec("options", None, "at least one of --ha-priority")
    _, cspec = load(cluster)
    render(vms.set_labels(cspec, name, {HA_PRIORITY_LABEL: str(ha_priority)}), json_out)


def _pairs(option: str, items: list[str] | None) -> list[tuple[str, str]]:
    from ahvlite.errors import InvalidSpec

    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidSpec(option, item, "KEY=VALUE")
        out.append((key, value))
    return out


@app.command(name="list")
def list_(json_out: JsonOpt = False) -> None:
    """Every VM on every host (state, host, vCPUs, memory, IPs when known)."""
    from ahvlite.cli.api import get

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
def show(name: NameArg, cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """One VM: identity, state, host, disks, NICs."""
    _, cspec = load(cluster)
    render(vms.show_vm(cspec, name), json_out)


@app.command()
def start(name: NameArg, json_out: JsonOpt = False, wait: ApiWaitOpt = True) -> None:
    """Power on (in HA guarantee mode only if the reservation still holds)."""
    from ahvlite.cli.api import run_task

    info = run_task("vm.lifecycle", {"action": "start", "name": name}, json_out=json_out,
                    wait=wait, title=f"starting {name}")
    if info is not None:
        render_dict(info, json_out)


@app.command()
def shutdown(
    name: NameArg,
    timeout_s: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 60,
    force: Annotated[bool, typer.Option("--force", help="Power off after the timeout.")]
    = False,
    cluster: ClusterOpt = None, json_out: JsonOpt = False,
    store: StoreOpt = None, wait: WaitOpt = False,
) -> None:
    """ACPI shutdown; waits up to --timeout, then powers off only with --force."""
    if url := configured_store(store):
        return _lifecycle(url, "shutdown", name, cluster, wait=wait, json_out=json_out,
                          timeout_s=timeout_s, force=force)
    _, cspec = load(cluster)
    with progress(not json_out, f"shutting down {name}"):
        info = vms.shutdown_vm(cspec, name, timeout_s=timeout_s, force=force)
    render(info, json_out)


@app.command()
def stop(name: NameArg,
         force: Annotated[bool, typer.Option("--force", help="Required: pull the plug.")]
         = False,
         cluster: ClusterOpt = None, json_out: JsonOpt = False,
         store: StoreOpt = None, wait: WaitOpt = False) -> None:
    """Power off at once, without asking the guest (needs --force)."""
    if url := configured_store(store):
        return _lifecycle(url, "stop", name, cluster, wait=wait, json_out=json_out,
                          force=force)
    _, cspec = load(cluster)
    render(vms.stop_vm(cspec, name, force=force), json_out)


@app.command()
def reboot(name: NameArg, cluster: ClusterOpt = None, json_out: JsonOpt = False,
           store: StoreOpt = None, wait: WaitOpt = False) -> None:
    """ACPI reboot."""
    if url := configured_store(store):
        return _lifecycle(url, "reboot", name, cluster, wait=wait, json_out=json_out)
    _, cspec = load(cluster)
    render(vms.reboot_vm(cspec, name), json_out)


@app.command()
def delete(name: NameArg,
           force: Annotated[bool, typer.Option("--force", help="Also when running.")]
           = False,
           cluster: ClusterOpt = None, json_out: JsonOpt = False,
           store: StoreOpt = None, wait: WaitOpt = False) -> None:
    """Remove the VM with its volumes, NVRAM and TPM state."""
    if url := configured_store(store):
        return _lifecycle(url, "delete", name, cluster, wait=wait, json_out=json_out,
                          force=force)
    _, cspec = load(cluster)
    result = vms.delete_vm(cspec, name, force=force)
    if json_out:
        emit_json(result)
        return
    console.print(f"deleted {name} from {result['host']} "
                  f"(volumes: {', '.join(result['deleted_volumes']) or 'none'})",
                  highlight=False)


@app.command(name="console")
def console_(
    name: NameArg,
    command: Annotated[str | None, typer.Option(
        "--command", "-c", help="Run this shell command on the serial console and print "
                                "its output (for scripts) instead of attaching.")] = None,
    timeout_s: Annotated[float, typer.Option("--timeout", help="For --command.")] = 30,
    cluster: ClusterOpt = None, json_out: JsonOpt = False,
) -> None:
    """Attach to the serial console (virsh console; leave with Ctrl-])."""
    _, cspec = load(cluster)
    if command is not None:
        status, output = vms.console_run(cspec, name, command, timeout_s=timeout_s)
        if json_out:
            emit_json({"name": name, "exit_status": status, "output": output})
        else:
            typer.echo(output)
        raise typer.Exit(status)
    uri, dom = vms.console_target(cspec, name)
    virsh = shutil.which("virsh")
    if virsh is None:
        raise MissingDependency("virsh is not installed", hint="apt-get install libvirt-clients")
    os.execv(virsh, [virsh, "-c", uri, "console", dom])


@disk_app.command(name="add")
def disk_add(
    name: NameArg,
    source: Annotated[str, typer.Argument(help="SIZE (10G) or IMAGE.")],
    bus: Annotated[str, typer.Option(help="scsi, virtio, sata or ide.")] = "scsi",
    full: Annotated[bool, typer.Option("--full", help="Copy the image.")] = False,
    disk_name: Annotated[str | None, typer.Option("--name", help="Disk name.")] = None,
    cluster: ClusterOpt = None, json_out: JsonOpt = False,
) -> None:
    """Add a disk; hot-plugged when the VM runs."""
    _, cspec = load(cluster)
    disk = parse_disk(source, bus=bus, full=full)
    if disk_name:
        disk = build(DiskSpec, **{**disk.model_dump(exclude_none=True), "name": disk_name})
    render(vms.add_disk(cspec, name, disk), json_out)


@nic_app.command(name="add")
def nic_add(name: NameArg,
            nic: Annotated[str, typer.Argument(help="NETWORK[:trunk=10,20][:mac=MAC]")],
            cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Add a NIC; hot-plugged when the VM runs."""
    _, cspec = load(cluster)
    render(vms.add_nic(cspec, name, parse_nic(nic)), json_out)


@nic_app.command(name="remove")
def nic_remove(name: NameArg, mac: Annotated[str, typer.Argument(help="The NIC's MAC.")],
               cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Remove a NIC (hot-unplugged when the VM runs)."""
    _, cspec = load(cluster)
    render(vms.remove_nic(cspec, name, mac), json_out)


@app.command(name="cpu-check")
def cpu_check(name: NameArg, cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Which hosts can run the VM's CPU (compareHypervisorCPU), what the others lack."""
    _, cspec = load(cluster)
    data = cpulevel.check_vm(cspec, name)
    if json_out:
        emit_json(data)
        return
    console.print(f"{name} ({data['host']}): CPU {data['cpu']['model']}", highlight=False)
    rows = [[h, r["result"], ", ".join(r["missing"]) or ("" if r["compatible"]
                                                          else r["message"] or "")]
            for h, r in data["hosts"].items()]
    console.print(table(f"hosts for {name}", ["host", "result", "missing"], rows))
