"""The redirector's listener on a real loopback socket: hostile bytes, then a login.

Target health is set directly (the checks against real tgtd run in the functional and
lab tests); the portal it redirects to is a plain listening socket of this test, which
is all the redirector's last look (a TCP connect) needs.
"""

from __future__ import annotations

import asyncio
import os

from ahvlite.storage import pdu, probe
from ahvlite.storage.config import RedirectorConfig
from ahvlite.storage.health import record
from ahvlite.storage.names import volume_target
from ahvlite.storage.redirector import Redirector

DISK = volume_target("vm-a-disk0-x.raw")


async def _login(port: int, keys: dict[str, str]) -> pdu.LoginResponse:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(pdu.login_request(isid=b"\x80" + os.urandom(5), itt=1, cmdsn=1, exp_statsn=0,
                              keys=keys))
    await w.drain()
    bhs, data = await asyncio.wait_for(probe.read_pdu(r), 5)
    w.close()
    return pdu.parse_login_response(bhs, data)


async def _scenario(tmp_path) -> dict[str, object]:
    portal_srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    alive = portal_srv.sockets[0].getsockname()[1]
    dead_srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    dead = dead_srv.sockets[0].getsockname()[1]
    dead_srv.close()
    await dead_srv.wait_closed()
    cfg = RedirectorConfig(host="h1", targets={"h1": f"127.0.0.1:{dead}",
                                               "h2": f"127.0.0.1:{alive}",
                                               "h3": f"127.0.0.1:{alive}"},
                           pool_dir=str(tmp_path), status_file=str(tmp_path / "s.json"),
                           manage_target=False)
    red = Redirector(cfg)
    # h1 (local) passed its last check but its portal no longer answers: the last look
    # catches it. h3 failed its last check: never chosen. h2 is the one.
    red.targets["h1"] = record(red.targets["h1"], ok=True, at_s=0, rtt_ms=1)
    red.targets["h2"] = record(red.targets["h2"], ok=True, at_s=0, rtt_ms=5)
    red.targets["h3"] = record(record(red.targets["h3"], ok=True, at_s=0, rtt_ms=1),
                               ok=False, at_s=1, error="no NOP-In")
    srv = await asyncio.start_server(red._client, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    out: dict[str, object] = {}
    # Hostile: garbage, a header promising 16 MiB, a half header, a flood of opens.
    for junk in (os.urandom(200), b"\x03" + b"\x00" * 4 + b"\xff\xff\xff" + b"\0" * 40,
                 b"\x43\x87"):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(junk)
        await w.drain()
        w.write_eof()
        out.setdefault("junk", []).append(await asyncio.wait_for(r.read(), 10))  # type: ignore[union-attr]
        w.close()
    rsp = await _login(port, {"InitiatorName": "iqn.2008-11.org.linux-kvm:u",
                              "TargetName": DISK})
    out["status"], out["keys"] = rsp.status, rsp.keys()
    out["h1"] = red.targets["h1"].state
    out["bad"] = (await _login(port, {"InitiatorName": "i", "TargetName": "iqn.x:y"})).status
    srv.close()
    portal_srv.close()
    out["redirects"] = list(red.redirects)
    return out


def test_hostile_bytes_then_a_login_is_redirected_to_a_healthy_target(tmp_path):
    out = asyncio.run(_scenario(tmp_path))
    assert out["junk"] == [b"", b"", b""]  # dropped without an answer, server still up
    assert out["status"] == pdu.STATUS_MOVED_TEMPORARILY
    port = out["keys"]["TargetAddress"].rsplit(":", 1)[1]  # type: ignore[index]
    assert out["keys"] == {"TargetAddress": f"127.0.0.1:{port}"}
    assert out["h1"] == "failed"  # marked by the last look
    assert out["bad"] == pdu.STATUS_NOT_FOUND
    assert [r["to"] for r in out["redirects"]] == ["h2", None]  # type: ignore[index]
