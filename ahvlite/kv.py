"""Versioned keys: the shapes every store speaks (pure data, no I/O).

Keys are slash-separated paths (``cluster/spec``); every value carries a version that
starts at 0 when the key is created and grows by one per write, so callers can
compare-and-set. The coordination store (ZooKeeper, embedded SQLite) implements
:class:`DocStore`; so does the reader of an old cluster directory
(``cluster.legacy``). The cluster layer reads and writes its documents through it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from ahvlite.errors import Conflict, InvalidSpec


class VersionMismatch(Conflict):
    """A compare-and-set found another version than the one expected."""

    kind = "version_mismatch"


@dataclass(frozen=True)
class Versioned:
    value: bytes
    version: int


@dataclass(frozen=True)
class Put:
    """Write ``key``; ``expected_version`` None = any, -1 = must not exist yet."""

    key: str
    value: bytes
    expected_version: int | None = None


@dataclass(frozen=True)
class Delete:
    key: str
    expected_version: int | None = None


@dataclass(frozen=True)
class Check:
    """In a transaction: ``key`` must be at ``version`` (writes nothing). HA uses it to
    act only while a host agent's heartbeat is still the one it timed."""

    key: str
    version: int


Op = Put | Delete | Check

MUST_NOT_EXIST = -1


class DocStore(Protocol):
    """What the cluster layer needs of a store: versioned keys, atomic writes, locks."""

    def get(self, key: str) -> Versioned | None: ...
    def put(self, key: str, value: bytes, expected_version: int | None = None) -> int: ...
    def delete(self, key: str, expected_version: int | None = None) -> None: ...
    def children(self, prefix: str) -> dict[str, Versioned]:
        """Direct children of ``prefix`` (``tasks`` -> ``{"0001": ...}``)."""
        ...
    def names(self, prefix: str) -> list[str]:
        """The names of ``prefix``'s direct children, without their values."""
        ...
    def transaction(self, ops: list[Op]) -> None:
        """All of ``ops`` or none (VersionMismatch names the first that failed)."""
        ...
    def lock(self, name: str, timeout_s: float) -> AbstractContextManager[None]:
        """Held by one holder at a time; OperationTimeout after ``timeout_s``."""
        ...


def check_key(key: str) -> str:
    """Keys are relative slash paths of [A-Za-z0-9._-:] segments."""
    segs = key.split("/")
    if not key or any(not s or s in (".", "..") or not all(c.isalnum() or c in "._-:"
                                                         for c in s) for s in segs):
        raise InvalidSpec("key", key, "slash-separated segments of letters, digits, . _ - :")
    return key
