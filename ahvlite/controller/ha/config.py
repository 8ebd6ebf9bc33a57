"""Reading and writing the HA settings (cluster state key ``ha``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ahvlite.clock import SYSTEM, Clock
from ahvlite.cluster.state import ClusterState
from ahvlite.controller.ha.settings import STATE_KEY, HaSettings
from ahvlite.errors import AhvliteError

log = logging.getLogger(__name__)


def load_settings(state: ClusterState) -> HaSettings:
    return HaSettings.from_doc(state.get(STATE_KEY))


def change_settings(state: ClusterState, **changes: Any) -> HaSettings:
    """Validate and store ``changes`` (None values are left as they are)."""
    result: dict[str, HaSettings] = {}

    def change(doc: dict[str, Any]) -> dict[str, Any]:
        result["new"] = HaSettings.from_doc(doc).with_changes(**changes)
        return result["new"].to_doc()

    state.update(STATE_KEY, change)
    return result["new"]


def settings_loader(state: ClusterState | None, *, ttl_s: float = 2.0,
                    clock: Clock = SYSTEM) \
        -> Callable[[], HaSettings]:
    """A cached reader for daemons: the last good settings when the store does not
    answer (or holds something unreadable)."""
    cache: dict[str, Any] = {"at": -1e9, "value": HaSettings()}

    def read() -> HaSettings:
        if state is None:
            return HaSettings()
        now = clock.monotonic()
        if now - cache["at"] >= ttl_s:
            cache["at"] = now
            try:
                cache["value"] = load_settings(state)
            except AhvliteError as exc:
                log.warning("ha settings: %s (keeping the last good ones)", exc.message)
        value: HaSettings = cache["value"]
        return value

    return read
