"""Coordination: one small interface, two stores (embedded SQLite, ZooKeeper)."""

from __future__ import annotations

from collections.abc import Mapping

from ahvlite.controller.coord.api import (
    MUST_NOT_EXIST,
    Coordinator,
    Delete,
    Leadership,
    NotLeader,
    Op,
    Put,
    Versioned,
    VersionMismatch,
)
from ahvlite.controller.coord.url import SqliteUrl, ZkUrl, parse_store_url

DEFAULT_SESSION_TIMEOUT_S = 3.0


def open_store(url: str, *, session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S,
               connect_timeout_s: float = 5.0, retry_s: float | None = None,
               env: Mapping[str, str] | None = None) -> Coordinator:
    """Open the store named by ``url`` (sqlite:///PATH or zk://HOSTS/CHROOT); its
    credential and TLS files as ``env`` (default: this process's environment) names
    them (see coord/url.py)."""
    parsed = parse_store_url(url, env)
    if isinstance(parsed, SqliteUrl):
        from ahvlite.controller.coord.sqlite import SqliteCoordinator

        return SqliteCoordinator(parsed.path, session_timeout_s=session_timeout_s)
    from ahvlite.controller.coord.zk import ZkCoordinator

    return ZkCoordinator(parsed, session_timeout_s=session_timeout_s,
                         connect_timeout_s=connect_timeout_s, retry_s=retry_s)


__all__ = ["DEFAULT_SESSION_TIMEOUT_S", "MUST_NOT_EXIST", "Coordinator", "Delete",
           "Leadership", "NotLeader", "Op", "Put", "VersionMismatch", "Versioned",
           "ZkUrl", "open_store", "parse_store_url"]
