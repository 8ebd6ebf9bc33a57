"""The leader's HA service: watch hosts, declare one down, restart its VMs elsewhere.

Every ``interval_s`` it reads both signals of every host (the host monitor's libvirt
connection state and the controller membership in the store) into the
:class:`~ahvlite.controller.ha.detection.DownDetector`. It keeps the definition of every
VM it sees (``ha/vms/NAME``), so after a host is declared down it can define and start
that host's running, protected VMs on healthy hosts, by priority, placed by an injected
``place`` function. A restart that fails (virtlockd still holds the disk: the old copy
may live) is retried on a later round, never forced; VMs that fit nowhere are reported
in ``ha/status`` and planned again each round. When a host comes back, shut-off
definitions of VMs HA moved away from it are removed, never started.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import Any, TypeVar

from ahvlite.cluster.placement import HostCapacity
from ahvlite.controller.coord.api import Coordinator, Delete, NotLeader, Put
from ahvlite.controller.ha.detection import DownDetector, Signals, Verdict
from ahvlite.controller.ha.records import PREFIX, STATUS_KEY, StoredVm, key
from ahvlite.controller.ha.restart import Place, by_memory, plan_restarts
from ahvlite.controller.ha.settings import HaSettings
from ahvlite.errors import AhvliteError, OperationTimeout
from ahvlite.virt import domains, failover
from ahvlite.virt.conn import close_quietly, open_connection

log = logging.getLogger(__name__)
T = TypeVar("T")


class HaService:
    """Leader-only (a :class:`~ahvlite.controller.daemon.Service`)."""

    def __init__(self, coord: Coordinator, monitor: Any,
                 settings: Callable[[], HaSettings], *, place_fn: Place = by_memory,
                 clock: Callable[[], float] = time.monotonic, interval_s: float = 0.5,
                 inventory_s: float = 1.0, retry_s: float = 2.0,
                 call_timeout_s: float = 10.0,
                 open_conn: Callable[[str], Any] | None = None,
                 closed: Callable[[], set[str]] = set) -> None:
        self.coord = coord
        self.monitor = monitor  # HostMonitor: .links[host].conn, .hosts[host]
        # Hosts in (or entering) maintenance: never restart targets. Their own loss is
        # still acted on: a host that dies while entering still runs VMs.
        self.closed = closed
        self.settings = settings
        self.place_fn = place_fn
        self.clock = clock
        self.interval_s = interval_s
        self.inventory_s = inventory_s
        self.retry_s = retry_s
        self.detector = DownDetector(settings().countdown_s)
        self.records: dict[str, StoredVm] = {}
        self.failures: dict[str, str] = {}
        self.restarts: list[dict[str, Any]] = []
        self._last_inventory: dict[str, float] = {}
        self._last_try: dict[str, float] = {}
        self.call_timeout_s = call_timeout_s
        self.open_conn = open_conn or self._open_link
        self._own: dict[str, Any] = {}
        self._abandoned: list[Any] = []  # stuck connections: kept, never used or closed
        self._workers: dict[str, ThreadPoolExecutor] = {}
        self._busy_since: dict[str, float] = {}
        self._status: bytes = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for name, v in self.coord.children(PREFIX).items():
            try:
                self.records[name] = StoredVm.from_bytes(v.value)
            except (ValueError, TypeError, KeyError):
                log.warning("ha: unreadable record %s", name)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="ha")
        self._thread.start()

    def _open_link(self, host: str) -> Any:
        uri = self.monitor.links[host].uri
        return open_connection(uri, keepalive_interval_s=2, keepalive_count=2, timeout_s=5)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for pool in self._workers.values():
            pool.shutdown(wait=False, cancel_futures=True)
        for host, conn in list(self._own.items()):
            if host not in self._busy_since:
                close_quietly(conn)
        self._own.clear()

    def _on(self, host: str, fn: Callable[..., T], *args: Any) -> T:
        """Run a libvirt call for ``host`` on that host's own worker thread.

        A call to a host that went silent can block far longer than keepalive promises
        (seen in the lab: listAllDomains on a cut-off host never returned). Waiting at
        most ``call_timeout_s``, and refusing new calls while one is stuck, keeps the
        HA loop (and every other host) going; a stuck host also counts as lost.
        """
        if host in self._busy_since:
            raise OperationTimeout(f"host {host}: an earlier libvirt call has not returned")
        pool = self._workers.get(host)
        if pool is None:
            pool = self._workers[host] = ThreadPoolExecutor(1, thread_name_prefix=f"ha-{host}")
        self._busy_since[host] = time.monotonic()
        future = pool.submit(fn, *args)
        future.add_done_callback(lambda _f: self._busy_since.pop(host, None))
        try:
            return future.result(timeout=self.call_timeout_s)
        except FutureTimeout:
            if host in self._own:
                self._abandoned.append(self._own.pop(host))
            raise OperationTimeout(f"host {host}: libvirt did not answer in "
                                   f"{self.call_timeout_s:g} s") from None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.coord.is_leader():
                    self.round()
            except NotLeader:
                # A session in doubt (a ZooKeeper member went away): skip this round.
                # Real loss of leadership stops this service through the daemon.
                pass
            except AhvliteError as exc:
                log.warning("ha round: %s", exc.message)
            except Exception:  # a bug must not end HA for the rest of the term
                log.exception("ha round failed")
            self._stop.wait(self.interval_s)

    # -- one round ----------------------------------------------------------------

    def _signals(self) -> dict[str, Signals]:
        members = self.coord.members()
        present = set(members)
        for data in members.values():
            try:
                present.add(str(json.loads(data).get("name", "")))
            except ValueError:
                pass
        out = {}
        for host in self.monitor.hosts:
            out[host] = Signals(libvirt_connected=self._conn(host) is not None,
                                present=host in present)
        return out

    def round(self) -> None:
        settings = self.settings()
        self.detector.countdown_s = settings.countdown_s
        now = self.clock()
        views = self.detector.update(now, self._signals())
        for host, view in views.items():
            conn = self._conn(host)
            if conn is not None and view.verdict != Verdict.DOWN and (
                    now - self._last_inventory.get(host, -1e9) >= self.inventory_s):
                self._inventory(host, conn)
                self._last_inventory[host] = now
        try:
            closed = self.closed()
        except AhvliteError as exc:
            log.warning("ha: reading maintenance state: %s", exc.message)
            closed = set()
        healthy = [h for h, v in views.items()
                   if v.verdict == Verdict.HEALTHY and h not in closed]
        for host, view in views.items():
            due = now - self._last_try.get(host, -1e9) >= self.retry_s
            if view.verdict == Verdict.DOWN and due:
                self._last_try[host] = now
                self._restart_from(host, healthy)
        self._publish(views)

    def _conn(self, host: str) -> Any:
        """HA's own libvirt connection to ``host`` while the host is reachable, else None.

        Reachable: the monitor's link is up and alive (a connection libvirt closed on a
        keepalive timeout counts as lost even before its close callback ran), and no HA
        call to the host is stuck. HA never calls through the monitor's connection: two
        threads on one connection that breaks mid-call crashed libvirt's client in the
        lab (a partition, then heal). Its own connection has one user, the host worker,
        and is abandoned (never closed under a pending call) when a call gets stuck.
        """
        link = self.monitor.links[host].conn
        busy = self._busy_since.get(host)
        if link is None or (busy is not None and time.monotonic() - busy > self.call_timeout_s):
            return None
        if not failover.is_alive(link):
            return None
        own = self._own.get(host)
        if own is not None and busy is None and not failover.is_alive(own):
            self._abandoned.append(self._own.pop(host))
            own = None
        if own is None:
            try:
                own = self._own[host] = self.open_conn(host)
            except AhvliteError as exc:
                log.warning("ha: connecting to %s: %s", host, exc.message)
                return None
        return own

    def _put(self, vm: StoredVm) -> None:
        self.coord.fenced([Put(key(vm.name), vm.to_bytes())])
        self.records[vm.name] = vm

    def _inventory(self, host: str, conn: Any) -> None:
        try:
            facts = self._on(host, failover.domain_facts, conn)
        except AhvliteError as exc:
            log.warning("ha: inventory of %s: %s", host, exc.message)
            return
        seen = set()
        for f in facts:
            seen.add(f.name)
            rec = self.records.get(f.name)
            if rec is not None and rec.host != host and rec.uuid != f.uuid:
                # Another VM of the same name: VM names are unique in the cluster, so
                # this is an operator's mistake; keep what we knew and say so.
                log.error("ha: %s on %s has uuid %s, the one on %s has %s", f.name, host,
                          f.uuid, rec.host, rec.uuid)
                continue
            if rec is not None and rec.host != host:
                if not f.active:
                    # The host is back with the definition of a VM that now runs
                    # elsewhere: remove it so nobody starts the old copy.
                    if host in rec.restarted_from and self._on(
                            host, failover.remove_stale, conn, f.name, f.uuid):
                        log.warning("ha: removed stale definition of %s from %s "
                                    "(it runs on %s)", f.name, host, rec.host)
                    continue
                other = self._conn(rec.host) if rec.host in self.monitor.links else None
                if rec.running and other is not None and (
                        f.name in self._on(rec.host, failover.running_names, other)):
                    log.error("ha: %s runs on both %s and %s", f.name, rec.host, host)
                    continue
                # Running here now (live migration, or a restart by an earlier leader).
            new = StoredVm(f.name, f.uuid, host, f.memory_mib, f.active, f.labels,
                           f.has_pci_hostdev, f.xml,
                           rec.restarted_from if rec is not None else ())
            if new != rec:
                self._put(new)
        for name, rec in list(self.records.items()):
            if rec.host == host and name not in seen:
                self.coord.fenced([Delete(key(name))])
                del self.records[name]

    def _capacities(self, healthy: list[str]) -> list[HostCapacity]:
        out = []
        for host in healthy:
            conn = self._conn(host)
            if conn is None:
                continue
            try:
                total, _ = self._on(host, domains.memory_mib, conn)
                used = self._on(host, domains.reserved_memory_mib, conn)
            except AhvliteError:
                continue
            out.append(HostCapacity(host, total, total - used))
        return out

    def _running_anywhere(self, name: str, hosts: list[str]) -> str | None:
        for host in hosts:
            conn = self._conn(host)
            try:
                if conn is not None and name in self._on(host, failover.running_names, conn):
                    return host
            except AhvliteError:
                continue
        return None

    def _restart_from(self, dead: str, healthy: list[str]) -> None:
        lost = [r for r in self.records.values() if r.host == dead and r.running]
        if not lost:
            return
        running = {r.name: r.host for r in self.records.values()
                   if r.running and r.host in healthy}
        plan = plan_restarts([r.record() for r in lost], self._capacities(healthy),
                             place_fn=self.place_fn, running=running)
        for vm, why in plan.unplaced:
            self.failures[vm] = f"not placed: {why}"
            log.warning("ha: %s from %s not placed: %s", vm, dead, why)
        for vm, why in plan.skipped:
            self.failures[vm] = f"not restarted: {why}"
        for vm, target in plan.steps:
            self.coord.check_leader()
            rec = self.records[vm]
            elsewhere = self._running_anywhere(vm, healthy)
            if elsewhere is not None:
                self._put(replace(rec.moved_to(elsewhere)))
                continue
            conn = self._conn(target)
            if conn is None:
                continue
            t0 = time.monotonic()
            try:
                self._on(target, failover.define_and_start, conn, rec.xml, vm)
            except AhvliteError as exc:
                # A held disk lease means the old copy may still run: try again later.
                self.failures[vm] = f"start on {target} failed: {exc.message}"
                log.warning("ha: restart of %s on %s failed (will retry): %s", vm, target,
                            exc.message)
                continue
            self._put(rec.moved_to(target))
            self.failures.pop(vm, None)
            self.restarts.append({"vm": vm, "from": dead, "to": target, "at": time.time(),
                                  "start_s": round(time.monotonic() - t0, 3)})
            del self.restarts[:-50]
            log.warning("ha: restarted %s from %s on %s", vm, dead, target)

    def _publish(self, views: dict[str, Any]) -> None:
        doc = {"hosts": {h: {"verdict": v.verdict.value,
                             "remaining_s": round(v.remaining_s, 1)} for h, v in views.items()},
               "failures": self.failures, "restarts": self.restarts}
        data = json.dumps(doc, sort_keys=True).encode()
        if data != self._status:
            self.coord.fenced([Put(STATUS_KEY, data)])
            self._status = data
