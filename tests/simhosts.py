"""A simulated cluster for maintenance runs: :class:`~ahvlite.cluster.maintenance.HostOps`
over hosts and VMs in memory (the run's one interface to hosts is ours to fake; the
test driver cannot live-migrate)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from ahvlite.cluster.maintenance import VmOnHost
from ahvlite.cluster.migrate import MigrateResult, MigrationProgress
from ahvlite.errors import AhvliteError
from ahvlite.sched.capacity import HostCapacity


class SimHosts:
    """Hosts and VMs in memory: migrations move a VM at once (``hold``: then wait, as
    a leader would while libvirt finishes the job)."""

    def __init__(self) -> None:
        self.total = {"h1": 4096, "h2": 4096, "h3": 4096}
        self.vms: dict[str, dict[str, Any]] = {
            v: {"host": "h1", "state": "running", "mib": 512, "pinned": False}
            for v in ("v1", "v2", "v3")}
        self.vms["p1"] = {"host": "h1", "state": "running", "mib": 256, "pinned": True}
        self.vms["off"] = {"host": "h1", "state": "shutoff", "mib": 256, "pinned": False}
        self.migrations: Counter[str] = Counter()
        self.shutdowns: Counter[str] = Counter()
        self.starts: Counter[str] = Counter()
        self.hold: dict[str, threading.Event] = {}
        self.refuse: dict[str, AhvliteError] = {}  # destination -> what migrate raises
        self.holding: dict[str, threading.Event] = {}
        self.mu = threading.Lock()

    def vms_on(self, host: str) -> list[VmOnHost]:
        with self.mu:
            return [VmOnHost(n, v["state"], v["mib"], v["pinned"])
                    for n, v in sorted(self.vms.items()) if v["host"] == host]

    def capacities(self) -> list[HostCapacity]:
        with self.mu:
            return [HostCapacity(h, t, t - sum(v["mib"] for v in self.vms.values()
                                               if v["host"] == h and v["state"] == "running"))
                    for h, t in self.total.items()]

    def where(self, vm: str) -> tuple[str, str] | None:
        with self.mu:
            v = self.vms.get(vm)
            return None if v is None else (v["host"], v["state"])

    def state_on(self, host: str, vm: str) -> str | None:
        with self.mu:
            v = self.vms.get(vm)
            return v["state"] if v is not None and v["host"] == host else None

    def migrate(self, vm: str, to: str, settings: Any, on_progress: Any) -> MigrateResult:
        if to in self.refuse:
            raise self.refuse[to]
        with self.mu:
            self.migrations[vm] += 1
            source = self.vms[vm]["host"]
            self.vms[vm]["host"] = to
        if on_progress is not None:
            on_progress(MigrationProgress(vm, source, to, 0.1, 1, 512 << 20, 128 << 20,
                                          0, 1 << 30, 20, 300, 0, False, False))
        if vm in self.hold:
            self.holding.setdefault(vm, threading.Event()).set()
            self.hold[vm].wait(60)
        return MigrateResult(vm, source, to, True, False, None, 120, 30, 512 << 20, 3, 0,
                             False, 300)

    def shutdown(self, vm: str, timeout_s: float) -> None:
        with self.mu:
            self.shutdowns[vm] += 1
            self.vms[vm]["state"] = "shutoff"

    def start(self, vm: str) -> None:
        with self.mu:
            self.starts[vm] += 1
            self.vms[vm]["state"] = "running"
