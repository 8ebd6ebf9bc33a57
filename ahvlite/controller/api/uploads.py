"""The leader's staging area for uploaded files (disk images on their way in).

A body is written to ``DIR/ID.part`` while its SHA-256 is computed, then renamed to
``DIR/ID``; a body over the size cap, or one that breaks off, leaves nothing behind.
Staged files that no task took within an hour are removed. Only names this module
makes (32 hex digits) are ever touched in the directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ahvlite.clock import SYSTEM
from ahvlite.errors import InvalidSpec, NotFound

DEFAULT_DIR = Path("/var/lib/ahvlite/uploads")
DEFAULT_MAX_BYTES = 64 << 30
MAX_AGE_S = 3600.0
ID_RE = re.compile(r"^[0-9a-f]{32}$")
STAGED_RE = re.compile(r"^[0-9a-f]{32}(\.part)?$")


@runtime_checkable
class TakesUploads(Protocol):
    """A task kind that consumes staged uploads (it runs on the leader, where they are)."""

    def use_uploads(self, area: UploadArea) -> None: ...


class TooLarge(InvalidSpec):
    """The body is larger than the staging area accepts (HTTP 413)."""


@dataclass
class Staging:
    """One upload being written: feed it chunks, then :meth:`finish` or :meth:`abort`."""

    area: UploadArea
    id: str
    _file: Any = None
    size: int = 0
    _sha: Any = field(default_factory=hashlib.sha256)

    @property
    def part(self) -> Path:
        return self.area.directory / f"{self.id}.part"

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.area.max_bytes:
            raise self.area.too_large(self.size + len(chunk))
        self._sha.update(chunk)
        self._file.write(chunk)
        self.size += len(chunk)

    def finish(self) -> tuple[str, int, str]:
        self._file.close()
        os.replace(self.part, self.area.directory / self.id)
        return self.id, self.size, self._sha.hexdigest()

    def abort(self) -> None:
        self._file.close()
        self.part.unlink(missing_ok=True)


class UploadArea:
    """``directory`` (made 0700 on first use), a size cap in bytes, a wall clock."""

    def __init__(self, directory: Path = DEFAULT_DIR, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_age_s: float = MAX_AGE_S, clock: Callable[[], float] = SYSTEM.time) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.clock = clock

    def too_large(self, size: int) -> TooLarge:
        return TooLarge("size", size, f"at most {self.max_bytes} bytes",
                        hint="the leader's upload cap")

    def begin(self, declared_size: int | None = None) -> Staging:
        """Refuse a declared size over the cap at once; else open a staging file."""
        if declared_size is not None and declared_size > self.max_bytes:
            raise self.too_large(declared_size)
        self.sweep()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Staging(self, uuid.uuid4().hex)
        fd = os.open(staging.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        staging._file = open(fd, "wb")  # noqa: SIM115 - closed by finish/abort
        return staging

    def path(self, upload_id: str) -> Path:
        """Where a finished upload is, for the task that consumes it."""
        if not ID_RE.match(upload_id):
            raise InvalidSpec("upload", upload_id, "an upload id (32 hex digits)")
        p = self.directory / upload_id
        if not p.is_file():
            raise NotFound(f"upload {upload_id} is not staged here",
                           hint="uploads are kept an hour on the leader that took them")
        return p

    def sweep(self) -> list[str]:
        """Remove staged files older than ``max_age_s``; returns their names."""
        removed: list[str] = []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return removed
        cutoff = self.clock() - self.max_age_s
        for e in entries:
            if not STAGED_RE.match(e.name) or not e.is_file(follow_symlinks=False):
                continue
            try:
                if e.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(e.path)
                    removed.append(e.name)
            except FileNotFoundError:
                continue
        return removed
