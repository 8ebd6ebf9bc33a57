"""``ahvlite cvm``: each host's controller VM (plan, deploy, status, stop, start, remove),
through the API. ``deploy`` uploads the boot image to the leader, then the leader's
task deploys from it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ahvlite.cli import api
from ahvlite.cli.output import console, emit_json, err_console, progress, table
from ahvlite.errors import InvalidSpec

app = typer.Typer(no_args_is_help=True,
                  help="The CVM of each host: storage controllers passed through (VFIO), "
                       "pinned vCPUs, locked memory, virbr0 + br0.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
HostArg = Annotated[str, typer.Argument(help="Host name (as in the cluster).")]
ControllerOpt = Annotated[list[str] | None, typer.Option(
    "--controller", help="PCI address of a storage controller to pass through "
                         "(repeat; default: every one that passes the checks).")]
LunOpt = Annotated[list[str] | None, typer.Option(
    "--lab-lun", help="A file on the host (in the shared pool or /var/lib/ahvlite/images) "
                      "passed as a SCSI disk through a loop device (machines without an "
                      "IOMMU; repeat).")]
DEFAULT_VCPUS = 8  # cluster.cvmplan's defaults (not imported: `--help` stays light)
DEFAULT_MEMORY_MIB = 16384


def _plan_rows(p: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for c in p["controllers"]:
        verdict = "pass through" if c["selected"] and c["passes"] else (
            "refused" if c["problems"] else "left to host")
        why = "; ".join(f"{x['message']} (fix: {x['fix']})" for x in c["problems"])
        rows.append([c["address"], c["kind"],
                     " ".join(x for x in (c.get("vendor"), c.get("product")) if x),
                     c.get("driver"), c.get("iommu_group"), ", ".join(c.get("disks", [])),
                     verdict, why])
    return rows


@app.command()
def plan(host: HostArg, controller: ControllerOpt = None, lab_lun: LunOpt = None,
         json_out: JsonOpt = False) -> None:
    """Show what HOST would pass to its CVM, and why (checks with their fixes)."""
    with progress(not json_out, f"reading {host}'s PCI devices and sysfs"):
        p = api.get(f"/v1/cvms/{host}/plan", controller=list(controller or []) or None,
                    lab_luns=len(lab_lun or ()))
    if json_out:
        emit_json(p)
        return
    console.print(table(f"{host}: passthrough checks", ["check", "ok", "detail", "fix"],
                        [[c["name"], "yes" if c["ok"] else ("no" if c["blocking"]
                                                           else "warning"),
                          c["detail"], c.get("fix")] for c in p["checks"]]))
    console.print(table(f"{host}: storage controllers (root filesystem on "
                        f"{p.get('root_device') or 'no block device'})",
                        ["PCI", "kind", "device", "driver", "IOMMU group", "disks",
                         "verdict", "why"], _plan_rows(p)))
    if p["deployable"]:
        what = ", ".join(p["selected"]) or f"{p['lab_luns']} lab LUN(s)"
        console.print(f"[green]{p['name']} can be deployed with {what}[/]")
    else:
        for b in p["blocking"]:
            console.print(f"[red]blocked:[/] {b}")


@app.command()
def deploy(
    host: HostArg,
    image: Annotated[Path, typer.Option("--image", help="The CVM's boot disk image "
                                        "(qcow2 or raw), uploaded to the leader.")],
    vcpus: Annotated[int, typer.Option("--vcpus", help="vCPUs, each pinned to a host CPU.")]
    = DEFAULT_VCPUS,
    memory_mib: Annotated[int, typer.Option("--memory-mib", help="Memory, locked.")]
    = DEFAULT_MEMORY_MIB,
    controller: ControllerOpt = None,
    lab_lun: LunOpt = None,
    mgmt_vlan: Annotated[int | None, typer.Option(
        "--mgmt-vlan", help="VLAN of the CVM's br0 NIC (default untagged).")] = None,
    no_start: Annotated[bool, typer.Option("--no-start", help="Define only.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Deploy HOST's CVM (one per host, named cvm-HOST)."""
    from ahvlite.controller.kinds.cvm import DeployParams
    from ahvlite.spec.errors import build

    if not image.is_file():
        raise InvalidSpec("image", str(image), "an existing disk image file (qcow2 or raw)")
    params: dict[str, Any] = {
        "host": host, "vcpus": vcpus, "memory_mib": memory_mib,
        "controllers": list(controller or []), "lab_luns": list(lab_lun or []),
        "mgmt_vlan": mgmt_vlan, "start": not no_start}
    # The form of every option before the image travels (the leader checks it all again).
    build(DeployParams, **params, upload="0" * 32)
    with progress(not json_out, f"uploading {image.name}") as report:
        size = image.stat().st_size
        shown = [0]

        def sent(n: int) -> None:
            if n - shown[0] >= 64 << 20 or n == size:
                shown[0] = n
                report(f"uploaded {n >> 20} of {size >> 20} MiB")
        with api.session() as c:
            staged = c.upload(image, sent)
    out = api.run_task("cvm.deploy", {**params, "upload": staged.upload},
                       json_out=json_out, title=f"deploying the CVM of {host}")
    assert out is not None
    for w in out.get("warnings", []):
        if not json_out:
            err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
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
           = None, json_out: JsonOpt = False) -> None:
    """The CVM of each host (or of HOST)."""
    _render(api.get(f"/v1/cvms/{host}" if host else "/v1/cvms"), json_out)


@app.command()
def start(host: HostArg, wait: api.WaitOpt = True, json_out: JsonOpt = False) -> None:
    """Start HOST's CVM."""
    out = api.run_task("cvm.start", {"host": host}, json_out=json_out, wait=wait,
                       title=f"starting the CVM of {host}")
    if out is not None:
        _render([out], json_out, single=True)


@app.command()
def stop(host: HostArg,
         force: Annotated[bool, typer.Option(
             "--force", help="Power off when the guest does not shut down in time.")] = False,
         timeout_s: Annotated[float, typer.Option("--timeout-s")] = 120,
         wait: api.WaitOpt = True, json_out: JsonOpt = False) -> None:
    """Shut HOST's CVM down (ACPI; --force powers it off after --timeout-s)."""
    out = api.run_task("cvm.stop", {"host": host, "force": force,
                                    "timeout_s": float(timeout_s)},
                       json_out=json_out, wait=wait, title=f"stopping the CVM of {host}")
    if out is not None:
        _render([out], json_out, single=True)


@app.command()
def remove(host: HostArg, wait: api.WaitOpt = True, json_out: JsonOpt = False) -> None:
    """Remove HOST's CVM: controllers back to the host, volumes and lab loops gone."""
    out = api.run_task("cvm.remove", {"host": host}, json_out=json_out, wait=wait,
                       title=f"removing the CVM of {host}")
    if out is None:
        return
    if json_out:
        emit_json(out)
        return
    console.print(f"removed {out['name']}: reattached {', '.join(out['reattached']) or 'none'}"
                  f"; volumes {', '.join(out['deleted_volumes']) or 'none'}; loops "
                  f"{', '.join(out['detached_loops']) or 'none'}")
