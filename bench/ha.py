"""VM HA on a 3-host lab (ZooKeeper + controller + host agent on every host).

* Host loss: a guest runs on a non-leader host; the host is killed (every daemon and
  QEMU, SIGKILL by recorded PID). Timed: failure -> the guest answers ping from its new
  host. Peer, same lab, same run: a cold boot of the same guest -> ping (what any
  restart costs at least). One kill per lab (a 3-member ZooKeeper survives one loss),
  so each run builds a fresh lab.
* Partition x N: the host running the guest is cut off at the rack, the guest must come
  back elsewhere, then the host is healed (its stale definition must go). Every host's
  running domains are polled all along; any VM seen on two hosts is a double start.

Knobs: AHVLITE_BENCH_HA_RUNS (kill runs, default 3), AHVLITE_BENCH_HA_PARTITIONS
(default 3; use 10 to show a double start is not a rare event that 3 runs miss).
"""

from __future__ import annotations

import ipaddress
import json
import os
import statistics
import threading
import time
from typing import Any

from ahvlite.controller.daemon import LEADER_KEY
from ahvlite.controller.ha.settings import HaSettings
from ahvlite.lab import faults, guests, lab
from ahvlite.lab.drills import pings, running_on
from ahvlite.lab.layout import LabLayout
from ahvlite.lab.services import lab_zk_members, member_mode, open_lab_store
from ahvlite.spec.lab import LabSpec
from ahvlite.virt import guest
from ahvlite.virt.conn import local_socket_connection
from bench.waiting import until

NAME = "bha"
SUBNET = ipaddress.IPv4Network("10.213.254.0/26")


def _defined(layout: LabLayout, host: str) -> set[str]:
    sock = layout.host(host).libvirt_sock
    with local_socket_connection(sock, timeout_s=3) as conn:
        return {n for n, _ in guest.list_domains(conn)}


def _until(pred: Any, timeout_s: float, what: str) -> Any:
    return until(pred, timeout_s, what, interval_s=0.1)  # drills: poll finer than labs


class Twins:
    def __init__(self, layout: LabLayout) -> None:
        self.layout, self.polls = layout, 0
        self.seen: list[tuple[str, list[str]]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            where: dict[str, list[str]] = {}
            for h in self.layout.hosts:
                for vm in running_on(self.layout, h.name):
                    where.setdefault(vm, []).append(h.name)
            self.seen += [(vm, hs) for vm, hs in where.items() if len(hs) > 1]
            self.polls += 1
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=10)


def _up() -> tuple[LabLayout, Any]:
    lab.up(LabSpec(name=NAME, hosts=3, subnet=SUBNET, zk=True, controllers=True))
    layout = lab.layout_of(NAME)
    coord = open_lab_store(layout)
    _until(lambda: coord.get(LEADER_KEY), 60, "no leader")
    return layout, coord


def _leader(coord: Any) -> str:
    return str(json.loads(coord.get(LEADER_KEY).value)["name"])


def _boot(layout: LabLayout, host: str, name: str,
          index: int = 0) -> tuple[guests.LabGuest, float]:
    state = lab.state_of(NAME)
    t0 = time.monotonic()
    g = guests.boot_from_disk(layout, state, layout.host(host), name,
                              str(layout.guest_addresses[index]))
    guests.record(layout, state, [g])
    _until(lambda: pings(layout, host, g.ip), 240, f"{name} never answered")
    return g, time.monotonic() - t0


def _recorded(coord: Any, vm: str) -> str | None:
    # Only once the leader saw it running: HA restarts nothing it recorded stopped.
    raw = coord.get(f"ha/vms/{vm}")
    rec = json.loads(raw.value) if raw else {}
    return rec["host"] if rec.get("running") else None


def kill_run() -> tuple[float, float, float]:
    """(failure -> restarted, failure -> ping, cold boot -> ping) in seconds."""
    layout, coord = _up()
    try:
        lead = _leader(coord)
        victim = next(h.name for h in reversed(layout.hosts) if h.name != lead)
        peer = next(h.name for h in layout.hosts if h.name not in (victim,))
        # The peer: a plain cold boot. Its own address: had it used the HA VM's, the
        # peer host would keep the peer's MAC for that address in its neighbour table,
        # and a restart onto that host would wait for the stale entry to fail (~10 s).
        _, boot_s = _boot(layout, peer, "hbpeer", index=1)
        with local_socket_connection(layout.host(peer).libvirt_sock) as c:
            guest.destroy_and_undefine(c, "hbpeer")
        g, _ = _boot(layout, victim, "hbvm")
        _until(lambda: _recorded(coord, "hbvm") == victim, 30, "leader never saw the VM")
        twins = Twins(layout)
        t0 = time.monotonic()
        faults.kill(NAME, victim)
        moved = _until(lambda: next((h.name for h in layout.hosts if h.name != victim
                                     and "hbvm" in running_on(layout, h.name)), None),
                       120, "not restarted")
        restarted = time.monotonic() - t0
        _until(lambda: pings(layout, moved, g.ip), 120, "restarted VM never answered")
        answered = time.monotonic() - t0
        print(f"    kill {victim}: restarted on {moved} after {restarted:.1f} s, answers "
              f"after {answered:.1f} s", flush=True)
        twins.stop()
        if twins.seen:
            raise AssertionError(f"double start: {twins.seen}")
        return restarted, answered, boot_s
    finally:
        coord.close()
        lab.down(NAME)


def partition_runs(n: int) -> tuple[list[float], list[float], int, list[Any]]:
    layout, coord = _up()
    fenced_first = 0
    restart_s, ping_s = [], []
    twins = Twins(layout)
    try:
        g, _ = _boot(layout, next(h.name for h in layout.hosts if h.name != _leader(coord)),
                     "hbpart")
        for _ in range(n):
            where = _until(lambda: _recorded(coord, "hbpart"), 30, "no record")
            _until(lambda w=where: "hbpart" in running_on(layout, w), 60, "not running")
            t0 = time.monotonic()
            faults.partition(NAME, where)
            try:
                moved = _until(lambda w=where: next(
                    (h.name for h in layout.hosts if h.name != w
                     and "hbpart" in running_on(layout, h.name)), None), 120, "not restarted")
                restart_s.append(time.monotonic() - t0)
                if "hbpart" not in running_on(layout, where):
                    fenced_first += 1
                _until(lambda m=moved: pings(layout, m, g.ip), 120, "never answered")
                ping_s.append(time.monotonic() - t0)
            finally:
                faults.heal(NAME, where)
            _until(lambda w=where: "hbpart" not in _defined(layout, w), 90,
                   "stale definition stayed")
            _until(lambda: len(coord.members()) == 3 and all(
                member_mode(m) for m in lab_zk_members(layout)), 90, "host never rejoined")
    finally:
        twins.stop()
        coord.close()
        lab.down(NAME)
    return restart_s, ping_s, fenced_first, twins.seen


def main() -> None:
    runs = int(os.environ.get("AHVLITE_BENCH_HA_RUNS", "3"))
    parts = int(os.environ.get("AHVLITE_BENCH_HA_PARTITIONS", "3"))
    s = HaSettings()
    print(f"HA, 3-host lab, agent lease {s.lease_s:g} s, watchdog {s.watchdog_s:g} s, "
          f"margin {s.margin_s:g} s (restart after {s.restart_after_s:g} s without a "
          f"heartbeat), controller session 3 s:")
    kills = [kill_run() for _ in range(runs)]
    if kills:
        restarted = [k[0] for k in kills]
        answered = [k[1] for k in kills]
        boots = [k[2] for k in kills]
        print(f"  host killed -> VM running elsewhere: p50 {statistics.median(restarted):.1f} s, "
              f"max {max(restarted):.1f} s ({runs} runs)")
        print(f"  host killed -> VM answers ping:      p50 {statistics.median(answered):.1f} s, "
              f"max {max(answered):.1f} s (goal <= 25 s)")
        ratio = statistics.median(answered) / statistics.median(boots)
        print(f"  peer: cold boot -> ping, same lab:   p50 {statistics.median(boots):.1f} s; "
              f"ratio failover/boot p50 {ratio:.1f}")
    if parts:
        r, p, fenced, twins = partition_runs(parts)
        print(f"  partition x {parts}: restarted elsewhere p50 {statistics.median(r):.1f} s, "
              f"ping p50 {statistics.median(p):.1f} s; old copy already off at restart "
              f"{fenced}/{parts}; double starts seen: {len(twins)}")


if __name__ == "__main__":
    main()
