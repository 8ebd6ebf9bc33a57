"""The cluster directory of earlier versions, as a :class:`~ahvlite.kv.DocStore`.

Before the store held everything, a cluster's state lived in files beside its cluster
file: ``cluster-state/KEY.json`` (maintenance, ADS rules, HA settings ...),
``cluster-cpu.json`` (the CPU level) and ``templates/NAME.json``. ``cluster apply -f``
imports them from here; a cluster file used directly (tests, a controller started with
``--cluster``) keeps its state here the same way.

Versions are the files' modification times (nanoseconds); writes go through a
temporary file and ``os.replace``, and a compare-and-set holds an ``flock``, so two
processes on this machine never lose each other's update.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ahvlite.clock import file_lock
from ahvlite.cluster.state import SPEC_KEY, STATE, ClusterState
from ahvlite.errors import NotFound
from ahvlite.kv import MUST_NOT_EXIST, Check, Delete, Op, Put, Versioned, VersionMismatch
from ahvlite.spec.cluster import ClusterSpec, load_cluster

STATE_DIR = "cluster-state"
CPU_FILE = "cluster-cpu.json"
TEMPLATES_DIR = "templates"


class DirStore:
    """Keys mapped onto the files of one cluster directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, key: str) -> Path:
        if key == f"{STATE}/cpu":
            return self.dir / CPU_FILE
        if key.startswith(f"{STATE}/"):
            return self.dir / STATE_DIR / f"{key[len(STATE) + 1:]}.json"
        if key.startswith(f"{TEMPLATES_DIR}/"):
            return self.dir / TEMPLATES_DIR / f"{key[len(TEMPLATES_DIR) + 1:]}.json"
        raise NotFound(f"{key} is not kept in a cluster directory",
                       hint="apply the cluster to a controller's store")

    @contextmanager
    def _flock(self, name: str, timeout_s: float | None = None) -> Iterator[None]:
        d = self.dir / STATE_DIR
        d.mkdir(parents=True, exist_ok=True)
        with file_lock(d / f".{name}.lock", timeout_s, what=f"lock {name}"):
            yield

    def get(self, key: str) -> Versioned | None:
        path = self._path(key)
        try:
            return Versioned(path.read_bytes(), path.stat().st_mtime_ns)
        except FileNotFoundError:
            return None

    def _write(self, path: Path, value: bytes) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        # Pretty, as people read these files.
        try:
            text = json.dumps(json.loads(value), indent=2, sort_keys=True) + "\n"
        except ValueError:
            text = value.decode()
        tmp.write_text(text)
        os.replace(tmp, path)
        return path.stat().st_mtime_ns

    def put(self, key: str, value: bytes, expected_version: int | None = None) -> int:
        path = self._path(key)
        with self._flock("store"):
            have = self.get(key)
            self._expect(key, have, expected_version)
            return self._write(path, value)

    @staticmethod
    def _expect(key: str, have: Versioned | None, want: int | None) -> None:
        if want == MUST_NOT_EXIST and have is not None:
            raise VersionMismatch(f"{key}: already exists")
        if want is not None and want != MUST_NOT_EXIST and (have is None
                                                             or have.version != want):
            raise VersionMismatch(f"{key}: changed meanwhile")

    def delete(self, key: str, expected_version: int | None = None) -> None:
        with self._flock("store"):
            have = self.get(key)
            if have is None:
                raise NotFound(f"{key} does not exist")
            self._expect(key, have, expected_version)
            self._path(key).unlink()

    def children(self, prefix: str) -> dict[str, Versioned]:
        if prefix == TEMPLATES_DIR:
            d = self.dir / TEMPLATES_DIR
        elif prefix == STATE:
            d = self.dir / STATE_DIR
        else:
            return {}
        out = {}
        for p in sorted(d.glob("*.json")) if d.exists() else []:
            got = self.get(f"{prefix}/{p.stem}")
            if got is not None:
                out[p.stem] = got
        return out

    def names(self, prefix: str) -> list[str]:
        return sorted(self.children(prefix))

    def transaction(self, ops: list[Op]) -> None:
        with self._flock("store"):
            for op in ops:
                have = self.get(op.key)
                if isinstance(op, Check):
                    if have is None or have.version != op.version:
                        raise VersionMismatch(f"{op.key}: changed meanwhile")
                else:
                    self._expect(op.key, have, op.expected_version)
            for op in ops:
                if isinstance(op, Put):
                    self._write(self._path(op.key), op.value)
                elif isinstance(op, Delete):
                    self._path(op.key).unlink(missing_ok=True)

    @contextmanager
    def lock(self, name: str, timeout_s: float) -> Iterator[None]:
        with self._flock(name, timeout_s):
            yield


def open_cluster_file(path: Path) -> ClusterSpec:
    """A cluster file with its state in the files beside it (see the module doc)."""
    spec = load_cluster(path)
    spec._state = ClusterState(DirStore(path.resolve().parent))
    return spec


def legacy_documents(path: Path) -> dict[str, bytes]:
    """What a cluster directory holds beside its cluster file, by store key (for
    ``cluster apply``'s import). The cluster spec itself is not among them."""
    store = DirStore(path.resolve().parent)
    out = {}
    for prefix in (STATE, TEMPLATES_DIR):
        for name, v in store.children(prefix).items():
            out[f"{prefix}/{name}"] = v.value
    cpu = store.get(f"{STATE}/cpu")
    if cpu is not None:
        out[f"{STATE}/cpu"] = cpu.value
    out.pop(SPEC_KEY, None)
    return out
