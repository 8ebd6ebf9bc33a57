"""Image task kinds: a disk image uploaded to the leader, imported into the shared pool
with its catalogue record (the store's ``images`` collection)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from ahvlite.controller.kinds.base import Kind, Params
from ahvlite.controller.tasks import TaskContext
from ahvlite.errors import AhvliteError, Conflict, InvalidSpec, Unsupported
from ahvlite.spec.vm import NAME_RE

COLLECTION = "images"
UPLOAD_ID = r"^[0-9a-f]{32}$"
HASH_CHUNK = 1 << 20


class ImportParams(Params):
    upload: str = Field(pattern=UPLOAD_ID, description="an upload id (POST /v1/uploads)")
    name: str = Field(pattern=NAME_RE.pattern, description="the image's name")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ImageImport(Kind[ImportParams]):
    """``image.import``: the staged upload ``upload`` becomes image ``name``.

    The catalogue record is made first (state ``importing``, naming this task): it
    reserves the name, so two imports of one name never share a volume. The staged
    file is inspected (raw or qcow2, no backing or external data file) before anything
    reaches the pool, then uploaded with progress; the record gets the format, virtual
    size, SHA-256, time and submitter; the staged file is removed. Any failure undoes
    it all (volume, record, staged file) while this controller still leads.

    A resumed run finds the record its earlier attempt made (its task id): a volume it
    finds then may be half-uploaded, so it is deleted and uploaded again from the
    staged file (which must still be on this controller: uploads stay on the leader
    that took them; on another one the task fails and is undone).
    """

    name = "image.import"
    Params = ImportParams
    uploads: Any = None  # the leader's UploadArea (see use_uploads)

    def use_uploads(self, area: Any) -> None:
        """Where this controller's API stages uploads (called when the API starts)."""
        self.uploads = area

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import images
        from ahvlite.controller.coord.api import NotLeader
        from ahvlite.virt import imageinfo

        p = self.params(ctx)
        cspec = self.cluster()
        state = cspec.state
        area = self.uploads
        if area is None:
            raise Unsupported("this controller takes no uploads (it serves no API)",
                              hint="import through a controller started with --api-listen")

        def reserve() -> bool:
            doc = state.doc(COLLECTION, p.name)
            if doc is not None:
                if doc.get("task") == ctx.task.id:
                    return True  # this task's earlier attempt made it
                raise Conflict(f"image {p.name} already exists",
                               hint="pick another name, or delete that image first")
            if images.image_volume(cspec, p.name) is not None:
                raise Conflict(f"image {p.name} already exists in the shared pool",
                               hint="pick another name")
            state.create_doc(COLLECTION, p.name, {
                "name": p.name, "state": "importing", "task": ctx.task.id,
                "submitted_by": ctx.task.submitted_by})
            return True

        def inspect() -> dict[str, Any]:
            path = area.path(p.upload)
            try:
                info = imageinfo.inspect_image(path)
            except InvalidSpec as exc:  # name the image, not the staging file
                raise InvalidSpec("image", p.name, exc.allowed, hint=exc.hint) from None
            ctx.progress(8, f"{p.name}: {info.format}, {info.virtual_size} bytes; "
                            "computing its SHA-256")
            return {"format": info.format, "virtual_size": info.virtual_size,
                    "sha256": sha256_of(path)}

        def upload(image: dict[str, Any]) -> dict[str, Any]:
            path = area.path(p.upload)
            if images.image_volume(cspec, p.name) is not None:
                ctx.check_leader()  # an earlier attempt's volume, maybe half-uploaded
                images.delete_image_volume(cspec, p.name)
            done = [-1]

            def report(sent: int, total: int) -> None:
                pct = 10 + 80 * sent // max(total, 1)
                if pct != done[0]:
                    done[0] = pct
                    ctx.progress(pct, f"uploading {p.name} into the pool: "
                                      f"{sent >> 20}/{total >> 20} MiB")

            vol = images.upload_image(cspec, imageinfo.ImageInfo(path, image["format"],
                                                              image["virtual_size"]),
                                   p.name, report=report, guard=ctx.check_leader)
            return {"volume": vol.name, "path": vol.path, "capacity_mib": vol.capacity_mib}

        def record(image: dict[str, Any], vol: dict[str, Any]) -> dict[str, Any]:
            doc = {"name": p.name, "state": "ready", "task": ctx.task.id,
                   "format": image["format"], "virtual_size": image["virtual_size"],
                   "sha256": image["sha256"], "submitted_by": ctx.task.submitted_by,
                   "imported_at": datetime.now(UTC).isoformat(timespec="seconds"), **vol}
            state.update_doc(COLLECTION, p.name, lambda _old: doc)
            return doc

        try:
            ctx.progress(2, f"reserving image name {p.name}")
            ctx.step("reserve", reserve)
            ctx.progress(5, f"inspecting the upload of {p.name}")
            image = ctx.step("inspect", inspect)
            vol = ctx.step("upload", lambda: upload(image))
            ctx.progress(95, f"recording {p.name} in the catalogue")
            doc = ctx.step("record", lambda: record(image, vol))
        except NotLeader:
            raise  # the next leader takes over: nothing is undone here
        except AhvliteError:
            self._undo(ctx, cspec, p)
            raise
        self._drop_staged(p.upload)
        return dict(doc)

    def _undo(self, ctx: TaskContext, cspec: Any, p: ImportParams) -> None:
        from ahvlite.cluster import images

        try:
            ctx.check_leader()
        except AhvliteError:
            return  # the next leader decides
        try:
            doc = cspec.state.doc(COLLECTION, p.name)
            if doc is not None and doc.get("task") == ctx.task.id:
                images.delete_image_volume(cspec, p.name)
                cspec.state.delete_doc(COLLECTION, p.name)
        except AhvliteError:
            pass  # what stays is this task's record, state importing: visible, removable
        self._drop_staged(p.upload)

    def _drop_staged(self, upload: str) -> None:
        try:
            self.uploads.path(upload).unlink(missing_ok=True)
        except (AhvliteError, OSError):
            pass  # already gone; the sweep removes anything left within the hour


KINDS: tuple[type[Kind[Any]], ...] = (ImageImport,)
