"""The redirector's own small iSCSI initiator: one health session per target.

A health session logs in to a target's health target (operational stage straight to
full feature: no authentication) and then answers one question per check: does a
NOP-Out come back as a NOP-In within the timeout? A session whose connection ends
(the target died: the kernel closes its sockets) is noticed at once by the reader,
not at the next check; the redirector then records a failed check immediately.

Only what health needs: no SCSI commands, no digests, one connection, and every PDU
the target sends is parsed with the same limits as the redirector's listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

from ahvlite.storage import pdu
from ahvlite.storage.names import HEALTH_TARGET

# What we tell targets we can receive; they may send less.
MAX_RECV = 8192
LOGIN_KEYS = {
    "HeaderDigest": "None",
    "DataDigest": "None",
    "MaxRecvDataSegmentLength": str(MAX_RECV),
    "ErrorRecoveryLevel": "0",
    "InitialR2T": "Yes",
    "ImmediateData": "No",
    "MaxConnections": "1",
    "DefaultTime2Wait": "0",
    "DefaultTime2Retain": "0",
}


class ProbeError(Exception):
    """A check that did not pass; the message says why (shown in status)."""


async def read_pdu(reader: asyncio.StreamReader, *, max_data: int = MAX_RECV
                   ) -> tuple[pdu.Bhs, bytes]:
    """One PDU: header, (skipped) AHS, data without padding."""
    head = await reader.readexactly(pdu.BHS_LEN)
    bhs = pdu.parse_bhs(head, max_data=max_data)
    if bhs.ahs_words:
        await reader.readexactly(4 * bhs.ahs_words)
    data = await reader.readexactly(bhs.data_len + pdu.pad4(bhs.data_len))
    return bhs, data[:bhs.data_len]


class HealthSession:
    """A logged-in session to ``address:port`` for NOP-Out checks."""

    def __init__(self, address: str, port: int, initiator: str, *,
                 target: str = HEALTH_TARGET,
                 on_lost: Callable[[str], None] = lambda _why: None) -> None:
        self.address, self.port = address, port
        self.initiator, self.target = initiator, target
        self.on_lost = on_lost
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[float]] = {}
        self._itt = 0
        self._cmdsn = 1
        self._exp_statsn = 0
        self.closed = True

    def _next_itt(self) -> int:
        self._itt = (self._itt + 1) % 0xFFFFFFFF  # never the reserved tag
        return self._itt

    async def login(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._login(), timeout_s)
        except (OSError, asyncio.IncompleteReadError, pdu.PduError) as exc:
            await self.close()
            raise ProbeError(f"login to {self.address}:{self.port}: "
                             f"{exc.__class__.__name__}: {exc}") from None
        except TimeoutError:
            await self.close()
            raise ProbeError(f"login to {self.address}:{self.port} took over "
                             f"{timeout_s:g} s") from None
        except ProbeError:
            await self.close()
            raise

    async def _login(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.address, self.port)
        self.closed = False
        # ISID type "random" (top bits 10), the rest ours.
        isid = bytes([0x80]) + os.urandom(5)
        keys = {"InitiatorName": self.initiator, "TargetName": self.target,
                "SessionType": "Normal", **LOGIN_KEYS}
        itt = self._next_itt()
        for _ in range(8):  # a target may answer with T=0 and want another round
            self._writer.write(pdu.login_request(
                isid=isid, itt=itt, cmdsn=self._cmdsn, exp_statsn=self._exp_statsn,
                keys=keys))
            await self._writer.drain()
            bhs, data = await read_pdu(self._reader)
            rsp = pdu.parse_login_response(bhs, data)
            if rsp.status != pdu.STATUS_SUCCESS:
                raise ProbeError(f"login to {self.address}:{self.port} refused "
                                 f"(status {rsp.status:#06x})")
            self._exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
            if rsp.transit and rsp.nsg == pdu.STAGE_FULL_FEATURE:
                self._cmdsn = rsp.exp_cmdsn
                self._task = asyncio.get_running_loop().create_task(self._read_loop())
                return
            keys = {}
        raise ProbeError(f"login to {self.address}:{self.port} never reached full feature")

    async def _read_loop(self) -> None:
        assert self._reader is not None and self._writer is not None
        why = "connection closed by the target"
        try:
            while True:
                bhs, data = await read_pdu(self._reader)
                if bhs.opcode == pdu.OP_NOP_IN:
                    nop = pdu.parse_nop_in(bhs, data)
                    if nop.ttt == pdu.RESERVED_TAG:  # an answer: its StatSN is ours
                        self._exp_statsn = (nop.statsn + 1) & 0xFFFFFFFF
                    fut = self._waiting.pop(nop.itt, None)
                    if fut is not None and not fut.done():
                        fut.set_result(time.monotonic())
                    if nop.ttt != pdu.RESERVED_TAG:
                        # The target pings us: answer with its tag (section 11.18.1).
                        self._writer.write(pdu.nop_out(
                            itt=pdu.RESERVED_TAG, ttt=nop.ttt, cmdsn=self._cmdsn,
                            exp_statsn=self._exp_statsn))
                elif bhs.opcode in (pdu.OP_REJECT, pdu.OP_LOGOUT_RSP):
                    why = f"target sent opcode {bhs.opcode:#04x}"
                    break
                # Async messages and anything else: not a health answer; keep reading.
        except (OSError, asyncio.IncompleteReadError) as exc:
            why = f"connection lost ({exc.__class__.__name__})"
        except pdu.PduError as exc:
            why = f"bad PDU from the target ({exc})"
        except asyncio.CancelledError:
            return
        self._fail_waiters(why)
        self._drop()
        self.on_lost(why)

    def _fail_waiters(self, why: str) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ProbeError(why))
        self._waiting.clear()

    def _drop(self) -> None:
        self.closed = True
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def nop(self, timeout_s: float) -> float:
        """One NOP-Out round trip; returns it in milliseconds, raises ProbeError."""
        if self.closed or self._writer is None:
            raise ProbeError("no session")
        itt = self._next_itt()
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[itt] = fut
        sent = time.monotonic()
        try:
            self._writer.write(pdu.nop_out(itt=itt, cmdsn=self._cmdsn,
                                           exp_statsn=self._exp_statsn, data=b"ahvlite"))
            await self._writer.drain()
            got = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise ProbeError(f"no NOP-In within {timeout_s:g} s") from None
        except OSError as exc:
            raise ProbeError(f"NOP-Out not sent: {exc}") from None
        finally:
            self._waiting.pop(itt, None)
        return (got - sent) * 1000

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._writer is not None and not self.closed:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(pdu.logout_request(
                    itt=self._next_itt(), cmdsn=self._cmdsn, exp_statsn=self._exp_statsn))
                await asyncio.wait_for(self._writer.drain(), 1)
        self._fail_waiters("session closed")
        self._drop()


async def reachable(address: str, port: int, timeout_s: float) -> bool:
    """Does anything accept a TCP connection there right now (the redirector's last
    look before sending a login to a portal)."""
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(address, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    w.close()
    with contextlib.suppress(OSError):
        await w.wait_closed()
    return True
