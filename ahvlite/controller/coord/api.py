"""The one small coordination interface every controller part talks to.

Keys are slash-separated paths (``tasks/0001``); every value carries a version that
starts at 0 when the key is created and grows by one per write, so callers can
compare-and-set. Membership is ephemeral (it disappears with the member's session),
leadership carries a fencing token that grows with every new leader, and every
side effect a leader makes in the store goes through :meth:`Coordinator.fenced`, which
refuses atomically once leadership is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from ahvlite.errors import Conflict
from ahvlite.kv import (
    MUST_NOT_EXIST,
    Check,
    Delete,
    Op,
    Put,
    Versioned,
    VersionMismatch,
    check_key,
)

__all__ = ["MUST_NOT_EXIST", "Check", "Coordinator", "Delete", "Leadership", "MemberState",
           "NotLeader", "Op", "Put", "VersionMismatch", "Versioned", "check_key"]


class NotLeader(Conflict):
    """This controller is not (or no longer) the leader; it must not act."""

    kind = "not_leader"


@dataclass(frozen=True)
class MemberState:
    """One store member as seen from this host: ``serving`` (part of a quorum),
    ``electing`` (answers, but says it is not serving: a leader election is under way)
    or ``unreachable``."""

    member: str
    state: str



@dataclass(frozen=True)
class Leadership:
    """Who leads now, as the store sees it."""

    identity: str
    token: int


class Coordinator(Protocol):
    """Keys with versions, ephemeral membership, leader election, locks."""

    url: str
    session_timeout_s: float

    # -- keys -------------------------------------------------------------------
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
    def watch(self, key: str, callback: Callable[[Versioned | None], None]) -> Callable[[], None]:
        """Call ``callback`` with the value now and after every change; returns a cancel."""
        ...

    # -- membership -------------------------------------------------------------
    def join(self, member: str, data: bytes) -> None:
        """Announce ``member`` until this session ends (or :meth:`leave`)."""
        ...
    def update_member(self, member: str, data: bytes) -> None: ...
    def leave(self, member: str) -> None: ...
    def members(self) -> dict[str, bytes]: ...
    def ensemble(self, timeout_s: float = 0.5) -> list[MemberState]:
        """Every configured store member's own word on whether it serves, asked in
        parallel and bounded by ``timeout_s`` (an embedded store: one member, serving)."""
        ...
    def sync(self, key: str) -> None:
        """Make the next reads of ``key`` (and below) see every write committed before."""
        ...
    def generation(self) -> int:
        """Grows each time this client's connection to the store was interrupted; a
        reader timing others by what it sees must start over when it changes."""
        ...

    # -- leadership -------------------------------------------------------------
    def campaign(self, identity: str, on_elected: Callable[[int], None],
                 on_lost: Callable[[str], None]) -> None:
        """Stand for leader in the background; callbacks get the token / the reason."""
        ...
    def resign(self) -> None: ...
    def leader(self) -> Leadership | None: ...
    def is_leader(self) -> bool: ...
    def check_leader(self) -> int:
        """The fencing token if this process leads now, else NotLeader; call before acting."""
        ...
    def fenced(self, ops: list[Op]) -> None:
        """Apply ``ops`` atomically only while this process still leads (else NotLeader)."""
        ...

    # -- locks ------------------------------------------------------------------
    def lock(self, name: str, timeout_s: float) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...
