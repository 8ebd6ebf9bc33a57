"""Reads about images: the shared pool's images with their catalogue records."""

from __future__ import annotations

from typing import Any

from ahvlite.controller.api.reads import NoQuery, Read, ReadContext, _dict
from ahvlite.errors import NotFound

COLLECTION = "images"  # the catalogue (controller.kinds.image writes it)
# What a catalogue record may tell a reader (the rest of a stored record is not shown).
RECORD_FIELDS = ("state", "format", "virtual_size", "sha256", "imported_at", "submitted_by",
                 "task")


def catalogue(ctx: ReadContext) -> dict[str, dict[str, Any]]:
    """The catalogue's records by image name; one that does not decode is left out."""
    from ahvlite.cluster.state import NAME_RE

    out = {}
    for name, v in ctx.coord.children(COLLECTION).items():
        doc = _dict(v.value)
        if NAME_RE.fullmatch(name) and doc:
            out[name] = {k: doc.get(k) for k in RECORD_FIELDS}
    return out


def _images(ctx: ReadContext) -> list[dict[str, Any]]:
    from ahvlite.cluster import images, vms

    records = catalogue(ctx)
    out = []
    for vol in images.images(ctx.spec()):
        name = vol.name.removeprefix(vms.IMAGE_PREFIX)
        out.append({"image": name, "name": vol.name, "format": vol.format,
                    "capacity_mib": vol.capacity_mib, "path": vol.path,
                    **records.pop(name, {"state": "ready"})})
    # Records without a volume: an import under way, or a volume removed behind our back.
    for name, rec in records.items():
        out.append({"image": name, "name": vms.IMAGE_PREFIX + name, "format": rec["format"],
                    "capacity_mib": None, "path": None,
                    **{**rec, "state": rec["state"] if rec["state"] == "importing"
                       else "missing"}})
    return sorted(out, key=lambda d: d["image"])


def image_list(ctx: ReadContext, _q: NoQuery) -> list[dict[str, Any]]:
    return _images(ctx)


def image_show(ctx: ReadContext, _q: NoQuery, *, name: str) -> dict[str, Any]:
    for image in _images(ctx):
        if image["image"] == name:
            return image
    raise NotFound(f"no image named {name!r}", hint="`ahvlite image list` shows them")


READS: tuple[Read, ...] = (
    Read("/v1/images", image_list, "the images of the shared pool with their catalogue "
                                   "records (format, virtual size, SHA-256, who, when)"),
    Read("/v1/images/{name}", image_show, "one image"),
)
