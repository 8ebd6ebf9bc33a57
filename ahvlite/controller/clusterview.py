"""The controller's cluster as the store holds it now.

A watch on ``cluster/spec`` keeps the view fresh: a host added with ``host add`` (or
``cluster apply``) reaches every running controller within moments, without a
restart. A stored spec that does not decode is logged and the last good one kept. When
the set of hosts or how to reach them changes, ``on_hosts_changed`` is called (the
leader restarts its host monitor, HA and ADS around the new hosts).

Legacy: a controller started with ``--cluster FILE`` reads that file (and the state
files beside it) instead; it does not watch it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ahvlite.cluster.legacy import open_cluster_file
from ahvlite.cluster.state import SPEC_KEY, ClusterState, decode
from ahvlite.controller.coord.api import Coordinator, Versioned
from ahvlite.errors import AhvliteError, NotFound
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.errors import build

log = logging.getLogger(__name__)


def _reach(spec: ClusterSpec) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((h.name, h.uri) for h in spec.hosts))


class ClusterView:
    def __init__(self, coord: Coordinator, *, cluster_file: Path | None = None) -> None:
        self.coord = coord
        self.cluster_file = cluster_file
        self._spec: ClusterSpec | None = None
        self._mu = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._cancel: Callable[[], None] | None = None
        if cluster_file is not None:
            self._spec = open_cluster_file(cluster_file)
            self.state: ClusterState = self._spec.state
        else:
            self.state = ClusterState(coord)

    def start(self) -> None:
        if self.cluster_file is None and self._cancel is None:
            self._cancel = self.coord.watch(SPEC_KEY, self._changed)

    def stop(self) -> None:
        if self._cancel is not None:
            self._cancel()
            self._cancel = None

    def on_hosts_changed(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    def _changed(self, got: Versioned | None) -> None:
        if got is None:
            return
        try:
            spec = build(ClusterSpec, **decode(got.value, "cluster spec"))
        except AhvliteError as exc:
            log.error("cluster spec in the store is unusable (keeping the last good one): "
                      "%s", exc.message)
            return
        spec._state = self.state
        with self._mu:
            before = self._spec
            self._spec = spec
        if before is not None and _reach(before) != _reach(spec):
            log.warning("cluster hosts changed: %s", ", ".join(h.name for h in spec.hosts))
            for fn in self._listeners:
                try:
                    fn()
                except Exception:
                    log.exception("reacting to changed hosts")

    def __call__(self) -> ClusterSpec:
        """The cluster now (NotFound while the store holds none)."""
        with self._mu:
            spec = self._spec
        if spec is not None:
            return spec
        spec = self.state.spec()  # before the watch's first call, or without one
        with self._mu:
            self._spec = self._spec or spec
            return self._spec

    def known(self) -> bool:
        try:
            self()
            return True
        except NotFound:
            return False
