"""``ahvlite cvm``: each host's controller VM (plan, deploy, status, stop, start, remove)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ahvlite.cli.context import ClusterOpt, load
from ahvlite.cli.output import console, emit_json, progress, table
from ahvlite.cluster import cvm, cvmplan

app = typer.Typer(no_args_is_help=True,
                  help="The CVM of each host: storage controllers passed through (VFIO), "
                       "pinned vCPUs, locked memory, virbr0 + br0.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
HostArg = Annotated[str, typer.Argument(help="Host name (as in the cluster file).")]
ControllerOpt = Annotated[list[str] | None, typer.Option(
    "--controller", help="PCI address of a storage controller to pass through "
                         "(repeat; default: every one that passes the checks).")]
LunOpt = Annotated[list[str] | None, typer.Option(
    "--lab-lun", help="A file on the host passed as a SCSI disk through a loop device "
                      "(machines without an IOMMU; repeat).")]


def _plan_rows(p: cvmplan.CvmPlan) -> list[list[Any]]:
    rows = []
    for c in p.controllers:
        verdict = "pass through" if c.selected and c.passes else (
            "refused" if c.problems else "left to host")
        why = "; ".join(f"{x.message} (fix: {x.fix})" for x in c.problems)
        rows.append([c.address, c.kind, " ".join(x for x in (c.vendor, c.product) if x),
                     c.driver, c.iommu_group, ", ".join(c.disks), verdict, why])
    return rows


@app.command()
def plan(host: HostArg, controller: ControllerOpt = None, lab_lun: LunOpt = None,
         cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Show what HOST would pass to its CVM, and why (checks with their fixes)."""
    _, spec = load(cluster)
    with progress(not json_out, f"reading {host}'s PCI devices and sysfs"):
        p = cvm.plan(spec, host, controllers=tuple(controller or ()),
                     lab_luns=len(lab_lun or ()))
    if json_out:
        emit_json(p.to_dict())
        return
    console.print(table(f"{host}: passthrough checks", ["check", "ok", "detail", "fix"],
                        [[c.name, "yes" if c.ok else ("no" if c.blocking else "warning"),
                          c.detail, c.fix] for c in p.checks]))
    console.print(table(f"{host}: storage controllers (root filesystem on "
                        f"{p.root_device or 'no block device'})",
                        ["PCI", "kind", "device", "driver", "IOMMU group", "disks",
                         "verdict", "why"], _plan_rows(p)))
    if p.deployable:
        what = ", ".join(p.selected) or f"{p.lab_luns} lab LUN(s)"
        console.print(f"[green]{p.name} can be deployed with {what}[/]")
    else:
        for b in p.blocking:
            console.print(f"[red]blocked:[/] {b}")


@app.command()
def deploy(
    host: HostArg,
    image: Annotated[Path, typer.Option("--image", help="The CVM's boot disk image "
                                        "(qcow2 or raw), copied to the host.")],
    vcpus: Annotated[int, typer.Option("--vcpus", help="vCPUs, each pinned to a host CPU.")]
    = cvmplan.DEFAULT_VCPUS,
    memory_mib: Annotated[int, typer.Option("--memory-mib", help="Memory, locked.")]
    = cvmplan.DEFAULT_MEMORY_MIB,
    controller: ControllerOpt = None,
    lab_lun: LunOpt = None,
    mgmt_vlan: Annotated[int | None, typer.Option(
        "--mgmt-vlan", help="VLAN of the CVM's br0 NIC (default untagged).")] = None,
    no_start: Annotated[bool, typer.Option("--no-start", help="Define only.")] = False,
    cluster: ClusterOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Deploy HOST's CVM (one per host, named cvm-HOST)."""
    _path, spec = load(cluster)
    with progress(not json_out, f"deploying the CVM of {host}") as report:
        out = cvm.deploy(spec, host, image=image, vcpus=vcpus, memory_mib=memory_mib,
                         controllers=tuple(controller or ()), lab_luns=tuple(lab_lun or ()),
                         mgmt_vlan=mgmt_vlan, start=not no_start, report=report)
    _render([out], json_out, single=True)


def _render(items: list[dict[str, Any]], json_out: bool, *, single: bool = False) -> None:
    if json_out:
        emit_json(items[0] if single else items)
        return
    rows = [[s["host"], s["name"], s["state"], s.get("autostart"),
             s.get("vcpus"), s.get("memory_mib"), ", ".join(s.get("controllers", [])),
             ", ".join(s.get("luns", [])), s.get("address") if s["state"] != "absent" else "",
             "yes" if s.get("pinned") else ""] for s in items]
    console.print(table("CVMs", ["host", "name", "state", "autostart", "vCPUs", "MiB",
                                 "controllers", "LUNs", "address", "pinned"], rows))


@app.command()
def status(host: Annotated[str | None, typer.Argument(help="One host (default: all).")]
           = None, cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """The CVM of each host (or of HOST)."""
    _path, spec = load(cluster)
    _render(cvm.status(spec, host), json_out)


@app.command()
def start(host: HostArg, cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Start HOST's CVM."""
    _path, spec = load(cluster)
    with progress(not json_out, f"starting the CVM of {host}"):
        out = cvm.start(spec, host)
    _render([out], json_out, single=True)


@app.command()
def stop(host: HostArg,
         force: Annotated[bool, typer.Option(
             "--force", help="Power off when the guest does not shut down in time.")] = False,
         timeout_s: Annotated[float, typer.Option("--timeout-s")] = 120,
         cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Shut HOST's CVM down (ACPI; --force powers it off after --timeout-s)."""
    _path, spec = load(cluster)
    with progress(not json_out, f"stopping the CVM of {host}"):
        out = cvm.stop(spec, host, force=force, timeout_s=timeout_s)
    _render([out], json_out, single=True)


@app.command()
def remove(host: HostArg, cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Remove HOST's CVM: controllers back to the host, volumes and lab loops gone."""
    _path, spec = load(cluster)
    with progress(not json_out, f"removing the CVM of {host}") as report:
        out = cvm.remove(spec, host, report=report)
    if json_out:
        emit_json(out)
        return
    console.print(f"removed {out['name']}: reattached {', '.join(out['reattached']) or 'none'}"
                  f"; volumes {', '.join(out['deleted_volumes']) or 'none'}; loops "
                  f"{', '.join(out['detached_loops']) or 'none'}")
