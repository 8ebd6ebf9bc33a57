"""``ahvlite image``: disk images in the shared storage pool and their catalogue.

``import`` sends the file to the leader's staging area (``POST /v1/uploads``), then
the leader's ``image.import`` task inspects it and uploads it into the pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ahvlite.cli.api import WaitOpt, get, run_task, session
from ahvlite.cli.output import console, emit_json, table
from ahvlite.errors import Conflict, NotFound

app = typer.Typer(no_args_is_help=True, help="Images: import, list.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command(name="import")
def import_(path: Annotated[Path, typer.Argument(help="qcow2 or raw file on this machine.")],
            name: Annotated[str, typer.Argument(help="Image name.")],
            json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Copy a disk image into the shared pool (through the leader: raw or qcow2 without
    a backing or data file; recorded with its SHA-256)."""
    from ahvlite.cli.progressbar import byte_bar, task_bar
    from ahvlite.spec.vm import check_name

    check_name("name", name)
    if not path.is_file():
        raise NotFound(f"{path} is not a file")
    with session() as c:
        try:  # a name in use is refused before anything is sent
            c.get(f"/v1/images/{name}")
        except NotFound:
            pass
        else:
            raise Conflict(f"image {name} already exists", hint="pick another name")
        with byte_bar(not json_out, f"sending {path.name}", path.stat().st_size) as sent:
            staged = c.upload(path, sent)
    with task_bar(not json_out and wait, f"importing {name}") as on_progress:
        doc = run_task("image.import", {"upload": staged.upload, "name": name},
                       json_out=json_out, wait=wait, title=f"importing {name}",
                       on_progress=on_progress)
    if doc is None:
        return
    if json_out:
        emit_json({"image": name, **doc})
        return
    console.print(escape(f"image {name}: {doc['format']}, {doc['capacity_mib']} MiB, "
                         f"{doc['path']}, sha256 {doc['sha256']}"), highlight=False)


def _row(d: dict[str, Any]) -> list[Any]:
    sha = d.get("sha256")
    return [d["image"], d.get("state"), d["format"], d["capacity_mib"],
            sha[:12] if isinstance(sha, str) else None, d.get("imported_at"), d["path"]]


@app.command(name="list")
def list_(json_out: JsonOpt = False) -> None:
    """Images in the shared pool, with what the catalogue knows of each."""
    found = get("/v1/images")
    if json_out:
        emit_json(found)
        return
    console.print(table("images", ["image", "state", "format", "size MiB", "sha256",
                                   "imported", "path"], [_row(d) for d in found]))
