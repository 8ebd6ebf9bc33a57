"""``ahvlite image``: disk images in the shared storage pool."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from ahvlite.cli.context import ClusterOpt, load
from ahvlite.cli.output import console, emit_json, err_console, table
from ahvlite.cluster import vms

app = typer.Typer(no_args_is_help=True, help="Images: import, list.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _image(v: object) -> dict[str, object]:
    d = asdict(v)  # type: ignore[call-overload]
    d["image"] = d["name"].removeprefix(vms.IMAGE_PREFIX)
    return d


@app.command(name="import")
def import_(path: Annotated[Path, typer.Argument(help="qcow2 or raw file on this machine.")],
            name: Annotated[str, typer.Argument(help="Image name.")],
            cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Copy a disk image into the shared pool (over libvirt, so hosts may be remote)."""
    _, cspec = load(cluster)
    if json_out:
        vol = vms.import_image(cspec, path, name)
    else:
        with err_console.status(f"importing {path} as {name}") as status:
            def report(sent: int, total: int) -> None:
                status.update(f"importing {path} as {name}: {sent * 100 // max(total, 1)} %")
            vol = vms.import_image(cspec, path, name, report=report)
    if json_out:
        emit_json(_image(vol))
        return
    console.print(f"image {name}: {vol.format}, {vol.capacity_mib} MiB, {vol.path}",
                  highlight=False)


@app.command(name="list")
def list_(cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Images in the shared pool."""
    _, cspec = load(cluster)
    found = [_image(v) for v in vms.images(cspec)]
    if json_out:
        emit_json(found)
        return
    console.print(table("images", ["image", "format", "size MiB", "path"],
                        [[d["image"], d["format"], d["capacity_mib"], d["path"]]
                         for d in found]))
