"""``ahvlite template``: versioned VM templates; deploy many VMs from one (reads and
tasks through the API)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ahvlite.cli.api import WaitOpt, get, run_task
from ahvlite.cli.output import console, emit_json, err_console, table
from ahvlite.errors import InvalidSpec, NotFound

app = typer.Typer(no_args_is_help=True,
                  help="VM templates: create, versions, set-active, deploy, list.")
version_app = typer.Typer(no_args_is_help=True, help="Template versions.")
app.add_typer(version_app, name="version")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NameArg = Annotated[str, typer.Argument(help="Template name.")]
FromVm = Annotated[str, typer.Option("--from-vm", help="The VM to capture (shut off).")]
MAX_USER_DATA = 64 * 1024


def _render(doc: dict[str, Any] | None, json_out: bool) -> None:
    from ahvlite.spec.errors import build
    from ahvlite.spec.template import TemplateSpec

    if doc is None:
        return
    if json_out:
        emit_json(doc)
        return
    spec = build(TemplateSpec, **doc)
    rows = [[("* " if v.version == spec.active_version else "  ") + str(v.version),
             v.from_vm, v.created_at, v.vcpus, v.memory_mib, v.boot.firmware,
             ", ".join(f"{d.name} ({d.bus})" for d in v.disks),
             ", ".join(n.network for n in v.nics)] for v in spec.versions]
    console.print(table(escape(f"template {spec.name} (* active)"),
                        ["version", "from VM", "created", "vcpus", "memory MiB", "boot",
                         "disks", "NICs"], rows))


def _path_name(name: str) -> str:
    from ahvlite.spec.vm import check_name

    return check_name("template", name)


@app.command()
def create(name: NameArg, from_vm: FromVm, json_out: JsonOpt = False,
           wait: WaitOpt = True) -> None:
    """Capture a shut-off VM (CPU, memory, disks, NICs) as version 1 of a template."""
    _render(run_task("template.create", {"name": name, "from_vm": from_vm},
                     json_out=json_out, wait=wait, title=f"creating template {name}"),
            json_out)


@version_app.command(name="add")
def version_add(name: NameArg, from_vm: FromVm,
                activate: Annotated[bool, typer.Option(
                    "--activate/--no-activate", help="Make it the active version.")] = True,
                json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Add a version captured from a VM; earlier versions stay deployable."""
    _render(run_task("template.version.add", {"name": name, "from_vm": from_vm,
                                              "activate": activate},
                     json_out=json_out, wait=wait, title=f"adding a version to {name}"),
            json_out)


@app.command()
def versions(name: NameArg, json_out: JsonOpt = False) -> None:
    """A template's versions (the active one marked)."""
    _render(get(f"/v1/templates/{_path_name(name)}"), json_out)


@app.command(name="set-active")
def set_active(name: NameArg, version: Annotated[int, typer.Argument(help="Version.")],
               json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Choose the version `deploy` uses by default."""
    _render(run_task("template.activate", {"name": name, "version": version},
                     json_out=json_out, wait=wait, title=f"activating {name} v{version}"),
            json_out)


@app.command(name="list")
def list_(json_out: JsonOpt = False) -> None:
    """Templates of the cluster."""
    found = get("/v1/templates")
    if json_out:
        emit_json(found)
        return
    console.print(table("templates", ["name", "active version", "versions"],
                        [[t["name"], t["active_version"], len(t["versions"])]
                         for t in found]))


@app.command()
def deploy(
    name: NameArg,
    count: Annotated[int, typer.Option("--count", help="How many VMs.")] = 1,
    prefix: Annotated[str | None, typer.Option(
        "--prefix", help="VM names are PREFIX1, PREFIX2 ... (default: NAME-).")] = None,
    version: Annotated[int | None, typer.Option(
        "--version", help="Template version (default: the active one).")] = None,
    user_data: Annotated[Path | None, typer.Option(
        "--user-data", help="cloud-init user-data for the NoCloud seed.")] = None,
    start: Annotated[bool, typer.Option("--start/--no-start", help="Start them.")] = True,
    host: Annotated[str | None, typer.Option("--host", help="All on this host.")] = None,
    json_out: JsonOpt = False, wait: WaitOpt = True,
) -> None:
    """Deploy VMs from a template: new uuid, MACs and genid each, disks cloned; each VM
    that fails is undone on its own (exit 9 when any failed)."""
    from ahvlite.cli.progressbar import task_bar

    data = None
    if user_data is not None:
        if not user_data.is_file():
            raise NotFound(f"user-data file {user_data} does not exist")
        if user_data.stat().st_size > MAX_USER_DATA:
            raise InvalidSpec("--user-data", str(user_data),
                              f"a file of at most {MAX_USER_DATA} bytes")
        data = user_data.read_text()
    params: dict[str, Any] = {"name": name, "count": count, "prefix": prefix,
                              "version": version, "user_data": data, "start": start,
                              "host": host}
    with task_bar(not json_out and wait, f"deploying {count} from {name}",
                  log=True) as on_progress:
        result = run_task("template.deploy", params, json_out=json_out, wait=wait,
                          title=f"deploying {count} from {name}", on_progress=on_progress)
    if result is None:
        return
    if json_out:
        emit_json(result)
    else:
        console.print(table(escape(f"deployed from {name}"), ["name", "host", "state", "uuid"],
                            [[v["name"], v["host"], v["state"], v["uuid"]]
                             for v in result["vms"]]))
        for vm, why in result["failed"].items():
            err_console.print(f"[red]failed:[/] {escape(vm)}: {escape(why)}",
                              highlight=False)
    if result["failed"]:
        raise typer.Exit(9)
