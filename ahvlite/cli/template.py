"""``ahvlite template``: versioned VM templates; deploy many VMs from one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ahvlite.cli.context import ClusterOpt, load
from ahvlite.cli.output import console, emit_json, err_console, progress, table
from ahvlite.cluster import templates
from ahvlite.errors import NotFound
from ahvlite.spec.template import TemplateSpec

app = typer.Typer(no_args_is_help=True,
                  help="VM templates: create, versions, set-active, deploy, list.")
version_app = typer.Typer(no_args_is_help=True, help="Template versions.")
app.add_typer(version_app, name="version")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NameArg = Annotated[str, typer.Argument(help="Template name.")]
FromVm = Annotated[str, typer.Option("--from-vm", help="The VM to capture (shut off).")]


def _render(spec: TemplateSpec, json_out: bool) -> None:
    if json_out:
        emit_json(spec.model_dump(mode="json"))
        return
    rows = [[("* " if v.version == spec.active_version else "  ") + str(v.version),
             v.from_vm, v.created_at, v.vcpus, v.memory_mib, v.boot.firmware,
             ", ".join(f"{d.name} ({d.bus})" for d in v.disks),
             ", ".join(n.network for n in v.nics)] for v in spec.versions]
    console.print(table(f"template {spec.name} (* active)",
                        ["version", "from VM", "created", "vcpus", "memory MiB", "boot",
                         "disks", "NICs"], rows))


@app.command()
def create(name: NameArg, from_vm: FromVm, cluster: ClusterOpt = None,
           json_out: JsonOpt = False) -> None:
    """Capture a shut-off VM (CPU, memory, disks, NICs) as version 1 of a template."""
    _path, cspec = load(cluster)
    with progress(not json_out, f"creating template {name}") as report:
        spec = templates.create_template(cspec, name, from_vm, report=report)
    _render(spec, json_out)


@version_app.command(name="add")
def version_add(name: NameArg, from_vm: FromVm,
                activate: Annotated[bool, typer.Option(
                    "--activate/--no-activate", help="Make it the active version.")] = True,
                cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Add a version captured from a VM; earlier versions stay deployable."""
    _path, cspec = load(cluster)
    with progress(not json_out, f"adding a version to {name}") as report:
        spec = templates.add_version(cspec, name, from_vm, activate=activate,
                                     report=report)
    _render(spec, json_out)


@app.command()
def versions(name: NameArg, cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """A template's versions (the active one marked)."""
    _, cspec = load(cluster)
    _render(templates.load_template(cspec.state, name), json_out)


@app.command(name="set-active")
def set_active(name: NameArg, version: Annotated[int, typer.Argument(help="Version.")],
               cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Choose the version `deploy` uses by default."""
    _, cspec = load(cluster)
    _render(templates.set_active(cspec.state, name, version), json_out)


@app.command(name="list")
def list_(cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Templates of the cluster."""
    _, cspec = load(cluster)
    found = templates.list_templates(cspec.state)
    if json_out:
        emit_json([t.model_dump(mode="json") for t in found])
        return
    console.print(table("templates", ["name", "active version", "versions"],
                        [[t.name, t.active_version, len(t.versions)] for t in found]))


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
    cluster: ClusterOpt = None, json_out: JsonOpt = False,
) -> None:
    """Deploy VMs from a template: new uuid, MACs and genid each, disks cloned."""
    _path, cspec = load(cluster)
    data = None
    if user_data is not None:
        if not user_data.is_file():
            raise NotFound(f"user-data file {user_data} does not exist")
        data = user_data.read_text()
    with progress(not json_out, f"deploying {count} from {name}") as report:
        result = templates.deploy(cspec, name, count=count, prefix=prefix,
                                  version=version, user_data=data, start=start, host=host,
                                  report=report)
    if json_out:
        emit_json(result.to_dict())
    else:
        console.print(table(f"deployed from {name}", ["name", "host", "state", "uuid"],
                            [[v.name, v.host, v.state, v.uuid] for v in result.vms]))
        for vm, why in result.failed.items():
            err_console.print(f"[red]failed:[/] {vm}: {why}", highlight=False)
    if result.failed:
        raise typer.Exit(9)
