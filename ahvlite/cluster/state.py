"""Small cluster state documents (maintenance, ADS rules, HA settings ...) kept next to
the cluster file, one JSON file per key, until the controller store backs them.

Every read-modify-write holds an exclusive ``flock`` on the key's lock file, so two CLI
runs (or a CLI and a controller on the same machine) never lose each other's update;
writes go through a temporary file and ``os.replace`` so a reader never sees half a file.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ahvlite.errors import InvalidSpec

STATE_DIR = "cluster-state"
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

Doc = dict[str, Any]


class ClusterState:
    """Keyed JSON documents in ``DIR/cluster-state/`` beside the cluster file."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    @classmethod
    def for_cluster_file(cls, cluster_file: Path) -> ClusterState:
        return cls(cluster_file.resolve().with_name(STATE_DIR))

    def _path(self, key: str) -> Path:
        if not KEY_RE.fullmatch(key):
            raise InvalidSpec("state key", key, "lower-case letters, digits, '_', '.', '-'")
        return self.dir / f"{key}.json"

    def get(self, key: str, default: Doc | None = None) -> Doc:
        path = self._path(key)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return dict(default or {})
        except json.JSONDecodeError as exc:
            raise InvalidSpec(f"cluster state {key}", str(path), f"JSON ({exc})",
                              hint="fix or remove the file") from None
        if not isinstance(raw, dict):
            raise InvalidSpec(f"cluster state {key}", str(path), "a JSON object")
        return raw

    def put(self, key: str, doc: Doc) -> None:
        with self._locked(key):
            self._write(key, doc)

    def update(self, key: str, change: Callable[[Doc], Doc | None]) -> Doc:
        """Apply ``change`` to the current document under the key's lock; returns the
        stored result (``change`` may edit in place and return None)."""
        with self._locked(key):
            doc = self.get(key)
            new = change(doc)
            doc = doc if new is None else new
            self._write(key, doc)
            return doc

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / f".{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, key: str, doc: Doc) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
