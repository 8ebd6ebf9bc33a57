"""What a disk image file really is, from ``qemu-img info`` (the one place that runs it).

An image file is untrusted: a qcow2 header can name a backing file or an external data
file anywhere on the host that opens it (a guest would read host files through its
disk, the class of OpenStack's CVE-2024-32498), and formats such as vmdk can name
extents the same way. So an image is probed once, then read again with its format
given explicitly (``-f``: no second guess), and refused unless it is plain raw or
qcow2 standing on its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ahvlite.errors import InvalidSpec, MissingDependency, OperationTimeout

ALLOWED_FORMATS = ("raw", "qcow2")
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    format: str
    virtual_size: int


def inspect_image(path: Path, *, timeout_s: float = TIMEOUT_S) -> ImageInfo:
    """``path``'s format and size, or InvalidSpec when it is not a self-contained raw or
    qcow2 image (another format, a backing file, an external data file)."""
    path = path.resolve()  # absolute: qemu-img never reads it as an option or protocol
    probed = _info(path, None, timeout_s)
    fmt = probed.get("format")
    if fmt not in ALLOWED_FORMATS:
        raise InvalidSpec("image", str(path), "a raw or qcow2 image",
                          hint=f"qemu-img sees format {fmt!r}; convert it with "
                               "`qemu-img convert -O qcow2 FILE NEW`")
    info = _info(path, str(fmt), timeout_s)
    for found in (probed, info):
        backing = found.get("backing-filename") or found.get("full-backing-filename")
        if backing:
            raise InvalidSpec("image", str(path), "an image without a backing file",
                              hint=f"it names {backing!r}; flatten it with "
                                   "`qemu-img convert -O qcow2 FILE NEW`")
        data_file = _data_file(found)
        if data_file:
            raise InvalidSpec("image", str(path), "an image without an external data file",
                              hint=f"it names {data_file!r}; make a self-contained copy "
                                   "with `qemu-img convert -O qcow2 FILE NEW`")
    size = info.get("virtual-size")
    if info.get("format") != fmt or not isinstance(size, int) or isinstance(size, bool):
        raise InvalidSpec("image", str(path), "a raw or qcow2 image qemu-img describes")
    return ImageInfo(path, str(fmt), size)


def _data_file(info: dict[str, Any]) -> str | None:
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    found = data.get("data-file") if isinstance(data, dict) else None
    return str(found) if found else None


def _info(path: Path, fmt: str | None, timeout_s: float) -> dict[str, Any]:
    program = shutil.which("qemu-img")
    if program is None:
        raise MissingDependency("qemu-img is not installed", hint="apt-get install qemu-utils")
    argv = [program, "info", "--output=json", "-U", *(["-f", fmt] if fmt else []), str(path)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise OperationTimeout(f"qemu-img info {path}: no answer in {timeout_s:g} s") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise InvalidSpec("image", str(path), "a disk image qemu-img can open",
                          hint=f"qemu-img: {why}")
    try:
        out = json.loads(done.stdout)
    except ValueError:
        out = None
    if not isinstance(out, dict):
        raise InvalidSpec("image", str(path), "a disk image qemu-img describes")
    return out
