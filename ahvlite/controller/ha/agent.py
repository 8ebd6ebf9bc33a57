"""The host agent: self-fence when cut off from the coordination store.

Like a watchdog: a probe thread reads from the store every ``probe_s``; whenever the
last successful read is older than the isolation timeout, the host powers off (destroy)
every running HA-protected VM (not pinned, not a CVM). The leader waits longer than that
(its countdown) before it restarts them elsewhere, so two copies never run. A read
that blocks (kazoo retries while disconnected) just ages the last success, which is
exactly the signal. Losing the store is not yet isolation, though: before it fences,
the agent asks whether the other store members still accept connections. If they do,
the store is unavailable to everyone (a ZooKeeper leader election after a member's host
lost power takes a few seconds, more with production tick times); the leader cannot
restart anything without the store, and fencing then would power off the VMs of every
healthy host at once. Only a host that reaches no other member is cut off and fences.
Contact regained ends the isolation: a fenced VM the leader has
not restarted elsewhere (its record still names this host) is powered on again here
(a disk lease held by a copy elsewhere would refuse that start); the leader removes
the definitions of the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ahvlite.controller.coord.api import Coordinator
from ahvlite.controller.ha.records import StoredVm, key
from ahvlite.controller.ha.restart import VmRecord
from ahvlite.controller.ha.settings import HaSettings
from ahvlite.errors import AhvliteError
from ahvlite.virt import failover
from ahvlite.virt.conn import connection

log = logging.getLogger(__name__)

PROBE_KEY = "controller/leader"
# Peers are asked in parallel; a cut-off host waits this long for nobody to answer,
# which the countdown's margin covers (see ha/settings.py).
PEER_TIMEOUT_S = 0.5


class HostAgent:
    def __init__(self, coord: Coordinator, host: str, libvirt_uri: str,
                 settings: Callable[[], HaSettings], *,
                 clock: Callable[[], float] = time.monotonic, probe_s: float = 0.5,
                 check_s: float = 0.5,
                 peers: Callable[[], list[str]] | None = None) -> None:
        self.coord = coord
        self.host = host
        self.uri = libvirt_uri
        self.settings = settings
        self.clock = clock
        self.probe_s = probe_s
        self.check_s = check_s
        # Who else answers while the store does not (see the module docstring).
        self.peers = peers or (lambda: coord.other_members_answering(PEER_TIMEOUT_S))
        self.store_down_seen = 0  # times the store was lost but peers answered
        self._store_down = False
        self.last_ok = clock()
        self.isolated = False
        self.fenced: list[str] = []
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._probe, daemon=True, name="agent-probe").start()
        threading.Thread(target=self._watch, daemon=True, name="agent-watch").start()

    def stop(self) -> None:
        self._stop.set()

    def _probe(self) -> None:
        while not self._stop.is_set():
            try:
                self.coord.get(PROBE_KEY)
                self.last_ok = self.clock()
            except AhvliteError:
                pass
            except Exception:  # kazoo may raise its own while the session is in doubt
                pass
            self._stop.wait(self.probe_s)

    def check(self) -> list[str]:
        """One watchdog check; returns the VMs it powered off."""
        timeout = self.settings().isolation_timeout_s
        if self.clock() - self.last_ok <= timeout:
            self._store_down = False
            if self.isolated:
                log.warning("agent: store reachable again")
                self.isolated = False
                self.restore()
            return []
        if not self.isolated:
            answering = self.peers()
            if answering:
                if not self._store_down:
                    self._store_down = True
                    self.store_down_seen += 1
                    log.warning("agent: no contact with the store for %.1f s, but members "
                                "%s answer: the store is down for everyone (an election?), "
                                "this host is not isolated; not fencing",
                                self.clock() - self.last_ok, ", ".join(answering))
                return []
            log.warning("agent: no contact with the store for %.1f s (> %.1f s) and no "
                        "other member answers: isolated, fencing",
                        self.clock() - self.last_ok, timeout)
        self.isolated = True
        return self.fence()

    def fence(self) -> list[str]:
        done = []
        try:
            with connection(self.uri, timeout_s=5) as conn:
                for f in failover.domain_facts(conn):
                    if not f.active:
                        continue
                    rec = VmRecord(f.name, "", f.memory_mib, True, f.labels, f.has_pci_hostdev)
                    if rec.protected and failover.power_off(conn, f.name):
                        done.append(f.name)
                        log.warning("agent: powered off %s (isolated)", f.name)
        except AhvliteError as exc:
            log.error("agent: fencing failed: %s", exc.message)
        self.fenced += done
        return done

    def restore(self) -> list[str]:
        """Power on fenced VMs that nobody restarted elsewhere; returns their names."""
        back = []
        for name in list(dict.fromkeys(self.fenced)):
            try:
                raw = self.coord.get(key(name))
                if raw is None or StoredVm.from_bytes(raw.value).host != self.host:
                    continue
                with connection(self.uri, timeout_s=5) as conn:
                    failover.power_on(conn, name)
                back.append(name)
                log.warning("agent: %s was not restarted elsewhere; powered on again", name)
            except AhvliteError as exc:
                log.warning("agent: %s stays off: %s", name, exc.message)
        self.fenced = []
        return back

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:
                log.exception("agent check failed")
            self._stop.wait(self.check_s)
