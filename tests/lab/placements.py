"""Where every VM of a lab runs, polled from each host's own libvirt socket on a thread
for the length of a drill: the record HA tests check (never on two hosts at once, each
VM moved once, when it left one host and came up on another)."""

from __future__ import annotations

import threading
import time

from ahvlite.controller.ha.records import StoredVm, key
from ahvlite.lab.drills import running_on
from ahvlite.lab.layout import LabLayout


class Placements:
    def __init__(self, layout: LabLayout, *, interval_s: float = 0.2) -> None:
        self.layout, self.interval_s = layout, interval_s
        # (monotonic time, host -> the VMs running there); a host that does not answer
        # shows as running nothing.
        self.seen: list[tuple[float, dict[str, set[str]]]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            where = {h.name: set(running_on(self.layout, h.name) or ())
                     for h in self.layout.hosts}
            self.seen.append((time.monotonic(), where))
            self._stop.wait(self.interval_s)

    @property
    def polls(self) -> int:
        return len(self.seen)

    def twins(self) -> list[tuple[float, str, list[str]]]:
        """Every (time, VM, hosts) at which a VM ran on more than one host.

        One poll reads the hosts one after another, so a live migration that switches
        over between two reads shows the VM on both ends once. A twin counts only when
        the next poll sees the VM on the same hosts again (the leader's own rule, and a
        real double run lasts far longer than two polls)."""
        out = []
        before: dict[str, set[str]] = {}
        for t, where in self.seen:
            hosts: dict[str, set[str]] = {}
            for h, vms in where.items():
                for vm in vms:
                    hosts.setdefault(vm, set()).add(h)
            for vm, hs in hosts.items():
                both = hs & before.get(vm, set())
                if len(both) > 1:
                    out.append((t, vm, sorted(both)))
            before = hosts
        return out

    def path(self, vm: str) -> list[str]:
        """The hosts ``vm`` ran on, in order, each stay counted once."""
        out: list[str] = []
        for _, where in self.seen:
            on = [h for h, vms in where.items() if vm in vms]
            if len(on) == 1 and (not out or out[-1] != on[0]):
                out.append(on[0])
        return out

    def last_on(self, vm: str, host: str) -> float | None:
        ts = [t for t, where in self.seen if vm in where[host]]
        return max(ts) if ts else None

    def first_elsewhere(self, vm: str, exclude: tuple[str, ...]) -> float | None:
        ts = [t for t, where in self.seen
              if any(vm in vms for h, vms in where.items() if h not in exclude)]
        return min(ts) if ts else None

    def __enter__(self) -> Placements:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=10)


def recorded_on(coord, vm: str) -> str | None:
    """The host the leader's HA record says ``vm`` runs on; None until it says it runs.
    A lab guest is defined, then started: a round between the two records it stopped,
    and HA restarts only what it saw running, so a drill waits for this first."""
    raw = coord.get(key(vm))
    if raw is None:
        return None
    rec = StoredVm.from_bytes(raw.value)
    return rec.host if rec.running else None
