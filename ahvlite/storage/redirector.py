"""The iSCSI redirector of one host (asyncio): 127.0.0.1:3261, like AHV's.

What QEMU's initiator (libiscsi, in Debian's qemu-block-extra) really does, read in
libiscsi 1.19's connect.c and login.c, and what this design rests on:

* A disk is opened with ``iscsi_full_connect_async(portal=127.0.0.1:3261)``, which
  stores that portal in the context. A Login Response of status 0x0101 with
  ``TargetAddress`` makes it disconnect and connect to that address, without changing
  the stored portal. (0x0102, "moved permanently", is treated as a failed login.)
* When a session drops (EOF or error on the socket; or QEMU's own NOP-Outs, one each
  5 s, go unanswered more than 3 times), libiscsi reconnects to the STORED portal,
  i.e. to this redirector again, in a fresh context; SCSI commands in flight are
  queued again and sent on the new session. The first reconnect is immediate; after
  a successful one the next waits at least 3 s; failed ones back off 1, 2, 3 ... s.

So failover is: the serving target dies, the kernel closes its connections, QEMU
comes back here at once, and is redirected to a healthy target; the guest sees only
the pause. Failback is: a remote target ends the connection of a VM of a host whose
own target is healthy again, and that VM's QEMU comes back here and is sent home.

Health: each target is checked every ``interval_s`` with a NOP-Out on a logged-in
session to its health target (probe.py); a lost session counts as a failed check at
once. A login is redirected only to a target whose last check passed, the local one
first; and right before answering, the chosen portal must still accept a TCP
connection (a target that died since its last check is marked failed and the next
one is taken), which closes the gap between a target's death and its next check.

With ``manage_target`` the redirector also keeps its host's tgtd in shape: it exports
every iSCSI volume of the shared pool, creates the health target only once all of
them are exported (a restarted, empty tgtd is not healthy to anyone), and ends the
sessions of other hosts' VMs on this target once their home target has passed
``rise`` checks in a row (health.failback).

Its view is written every interval to ``status_file`` (JSON, replaced atomically).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any

from ahvlite.errors import AhvliteError
from ahvlite.spec.storage import split_portal
from ahvlite.storage import health, login, pdu, probe, tgt
from ahvlite.storage.config import RedirectorConfig
from ahvlite.storage.names import (
    HEALTH_TARGET,
    is_lun_volume,
    redirector_initiator,
    vm_uuid_of,
    volume_target,
)

log = logging.getLogger("ahvlite.storage.redirector")

LOGIN_READ_TIMEOUT_S = 5.0
MAX_CLIENTS = 256
MAX_LOGIN_PDUS = 4  # a first login split over more PDUs than this is not QEMU's
REACHABLE_TIMEOUT_S = 0.5
HISTORY = 64


class Redirector:
    def __init__(self, cfg: RedirectorConfig, *, target: tgt.Tgt | None = None) -> None:
        self.cfg = cfg
        self.th = cfg.thresholds
        self.tgt = target
        self.targets = {h: health.TargetHealth(host=h, portal=p)
                        for h, p in sorted(cfg.targets.items())}
        self.initiator = redirector_initiator(cfg.host)
        self.redirects: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.failbacks: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.local: dict[str, Any] = {"sessions": [], "exports": 0, "health_target": False,
                                      "error": None}
        self.holds: dict[str, health.HoldOff] = {}
        self.clients = 0
        self.logins = 0
        self._wake: dict[str, asyncio.Event] = {}
        self._server: asyncio.Server | None = None
        self._stop = asyncio.Event()

    # -- health ---------------------------------------------------------------------

    def _record(self, host: str, ok: bool, *, rtt_ms: float | None = None,
                error: str | None = None) -> None:
        before = self.targets[host]
        after = health.record(before, ok=ok, at_s=time.monotonic(), rtt_ms=rtt_ms,
                              error=error)
        self.targets[host] = after
        if before.last_ok != after.last_ok:
            log.info("target %s (%s): %s%s", host, after.portal, after.state,
                     f" ({error})" if error else "")
            self._write_status()

    async def _watch(self, host: str) -> None:
        addr, port = self.cfg.portal_of(host)
        wake = self._wake.setdefault(host, asyncio.Event())
        session: probe.HealthSession | None = None

        def lost(why: str) -> None:
            self._record(host, False, error=why)

        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if session is None or session.closed:
                    session = probe.HealthSession(addr, port, self.initiator, on_lost=lost)
                    await session.login(self.th.timeout_s)
                rtt = await session.nop(self.th.timeout_s)
                self._record(host, True, rtt_ms=round(rtt, 2))
            except probe.ProbeError as exc:
                if session is not None and not session.closed:
                    await session.close()
                session = None
                self._record(host, False, error=str(exc))
            wait = max(0.0, self.th.interval_s - (time.monotonic() - started))
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)
        if session is not None:
            await session.close()

    # -- logins ---------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        try:
            if self.clients > MAX_CLIENTS:
                return
            await asyncio.wait_for(self._login(reader, writer), LOGIN_READ_TIMEOUT_S)
        except (OSError, asyncio.IncompleteReadError, pdu.PduError, TimeoutError) as exc:
            log.debug("login connection dropped: %s", exc)
        finally:
            self.clients -= 1
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _login(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        text = pdu.Reassembly()
        for _ in range(MAX_LOGIN_PDUS):
            bhs, data = await probe.read_pdu(reader, max_data=pdu.MAX_LOGIN_DATA)
            req = pdu.parse_login_request(bhs, data)
            text.add(data)
            if not req.cont:
                break
            # More text follows (C bit): acknowledge with an empty response, same stage.
            writer.write(pdu.login_response(request=req, status=pdu.STATUS_SUCCESS))
            await writer.drain()
        else:
            raise pdu.PduError("login text split over too many PDUs")
        try:
            keys = pdu.parse_text(text.text())
        except pdu.PduError as exc:
            writer.write(pdu.login_response(request=req, status=pdu.STATUS_INITIATOR_ERROR))
            await writer.drain()
            raise exc
        verdict = await self._decide(req, keys)
        self.logins += 1
        writer.write(pdu.login_response(request=req, status=verdict.status, keys=verdict.keys))
        await writer.drain()
        entry = {"at": round(time.time(), 3), "initiator": keys.get("InitiatorName", "")[:223],
                 "target": keys.get("TargetName", "")[:223], "status": f"{verdict.status:#06x}",
                 "to": verdict.host, "reason": verdict.reason}
        self.redirects.append(entry)
        log.info("login %s for %s -> %s (%s)", entry["initiator"], entry["target"],
                 verdict.host or f"status {entry['status']}", verdict.reason)
        self._write_status()  # who asks where a disk went wants to know now

    async def _decide(self, req: pdu.LoginRequest, keys: dict[str, str]) -> login.Verdict:
        tried: list[str] = []
        while True:
            v = login.verdict(req, keys, self.targets, self.cfg.host, rise=self.th.rise,
                              exclude=tuple(tried))
            if v.host is None:
                return v
            addr, port = self.cfg.portal_of(v.host)
            if await probe.reachable(addr, port, REACHABLE_TIMEOUT_S):
                return v
            # Died since its last check: a failed check now, and the next one.
            self._record(v.host, False, error="refused a connection at login")
            self._wake.get(v.host, asyncio.Event()).set()
            tried.append(v.host)

    # -- the local target -------------------------------------------------------------

    def _wanted(self) -> tuple[dict[str, str] | None, str]:
        """iqn -> backing file of every iSCSI volume in the pool (None: unreadable,
        with why)."""
        try:
            names = os.listdir(self.cfg.pool_dir)
        except OSError as exc:
            return None, f"pool {self.cfg.pool_dir}: {exc.strerror or exc}"
        pool = Path(self.cfg.pool_dir)
        return {volume_target(n): str(pool / n) for n in names
                if is_lun_volume(n) and (pool / n).is_file()}, ""

    def _tend_target(self) -> list[dict[str, Any]]:
        """Reconcile this host's tgtd and run failback (blocking: a worker thread).
        Returns the failbacks done, for the event loop to record (the status is read
        there, so this thread never touches the history)."""
        assert self.tgt is not None
        targets = self.tgt.targets()
        wanted, pool_error = self._wanted()
        errors = []
        if wanted is None:
            # Without the pool this target serves nothing right: say so to everyone.
            if any(t.iqn == HEALTH_TARGET for t in targets):
                self.tgt.unexport(HEALTH_TARGET, force=True)
        else:
            plan = tgt.plan_exports(targets, wanted)
            for iqn, path in plan.add:
                try:
                    self.tgt.export(iqn, path, self.cfg.initiator_addresses)
                    log.info("exported %s (%s)", iqn, path)
                except AhvliteError as exc:
                    errors.append(exc.message)
            by_iqn = {t.iqn: t for t in targets}
            for iqn in plan.remove:
                if by_iqn[iqn].sessions:
                    continue  # its file is gone, but a VM still has it open: leave it
                with contextlib.suppress(AhvliteError):
                    self.tgt.unexport(iqn)
                    log.info("removed %s (its volume is gone)", iqn)
            if not errors:
                self.tgt.ensure_health_target(self.cfg.initiator_addresses)
            targets = self.tgt.targets()
        sessions = [s for t in targets for s in t.sessions]
        now = time.monotonic()
        plan_fb = health.failback(self.cfg.host, sessions, self.targets,
                                  self.cfg.host_of_address, self.holds, now, self.th)
        ended = []
        done: list[dict[str, Any]] = []
        for home, s in plan_fb.end:
            try:
                self.tgt.end_session(s)
                ended.append((home, s))
                done.append({"at": round(time.time(), 3), "home": home,
                             "initiator": s.initiator, "target": s.target})
                log.info("failback: ended %s's session of %s on %s (home %s is healthy)",
                         s.initiator, s.target, self.cfg.host, home)
            except AhvliteError as exc:
                errors.append(exc.message)
        self.holds = health.after_ending(self.holds, ended, now, self.th, self.targets)
        hosts = self.cfg.host_of_address
        self.local = {
            "exports": sum(1 for t in targets if t.iqn != HEALTH_TARGET),
            "health_target": any(t.iqn == HEALTH_TARGET for t in targets),
            "sessions": [{"target": s.target, "initiator": s.initiator, "address": s.address,
                          "host": hosts.get(s.address), "vm_uuid": vm_uuid_of(s.initiator),
                          "sid": s.sid, "cid": s.cid}
                         for s in sessions if s.target != HEALTH_TARGET],
            "health_sessions": sorted({hosts.get(s.address, s.address) for s in sessions
                                       if s.target == HEALTH_TARGET}),
            "held": len(plan_fb.held),
            "error": "; ".join(errors) or None,
        }
        if wanted is None:
            self.local["error"] = pool_error
        return done

    async def _tend(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            started = time.monotonic()
            if self.tgt is not None:
                try:
                    self.failbacks.extend(await loop.run_in_executor(None, self._tend_target))
                except Exception as exc:  # never let the target's trouble stop logins
                    why = exc.message if isinstance(exc, AhvliteError) else \
                        f"{exc.__class__.__name__}: {exc}"
                    if not isinstance(exc, AhvliteError):
                        log.exception("tending the local target failed")
                    # A target that does not answer tgtadm holds no session we can vouch for.
                    self.local = {"exports": 0, "health_target": False, "sessions": [],
                                  "health_sessions": [], "held": 0, "error": why}
            self._write_status()
            wait = max(0.05, self.th.interval_s - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

    # -- status ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "host": self.cfg.host,
            "listen": self.cfg.listen,
            "written_at": round(time.time(), 3),
            "pid": os.getpid(),
            "thresholds": {"interval_s": self.th.interval_s, "timeout_s": self.th.timeout_s,
                           "failback_checks": self.th.rise},
            "targets": [{"host": h.host, "portal": h.portal, "state": h.state,
                         "checks": h.checks, "ok_streak": h.ok_streak,
                         "fail_streak": h.fail_streak, "rtt_ms": h.rtt_ms,
                         "last_error": h.last_error,
                         "for_s": round(now - h.changed_s, 1) if h.changed_s else None,
                         "local": h.host == self.cfg.host}
                        for h in self.targets.values()],
            "choice": health.ranked(self.targets, self.cfg.host, rise=self.th.rise),
            "logins": self.logins,
            "local_target": self.local if self.tgt is not None else None,
            "redirects": list(self.redirects)[-20:],
            "failbacks": list(self.failbacks)[-20:],
        }

    def _write_status(self) -> None:
        path = Path(self.cfg.status_file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(self.status(), sort_keys=True))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)

    # -- run ------------------------------------------------------------------------

    async def serve(self) -> None:
        addr, port = split_portal(self.cfg.listen, 3261)
        self._server = await asyncio.start_server(self._client, addr, port,
                                                  reuse_address=True, limit=1 << 16)
        log.info("redirector of %s on %s:%d; targets %s", self.cfg.host, addr, port,
                 ", ".join(f"{h}={p}" for h, p in self.cfg.targets.items()))
        tasks = [asyncio.create_task(self._watch(h)) for h in self.targets]
        tasks.append(asyncio.create_task(self._tend()))
        try:
            await self._stop.wait()
        finally:
            self._server.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()


def run(cfg: RedirectorConfig) -> None:
    """Serve until SIGTERM/SIGINT (the daemon's main)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    target = tgt.Tgt(tgt.local_run(), control_port=cfg.tgt_control_port) \
        if cfg.manage_target else None
    r = Redirector(cfg, target=target)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, r.stop)
        await r.serve()

    asyncio.run(main())
