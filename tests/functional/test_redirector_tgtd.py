"""The redirector between real tgtd targets and QEMU's real iSCSI initiator (libiscsi,
through qemu-io / qemu-img), in a network namespace of its own.

Three tgtds stand for three hosts' targets (127.0.0.2-4 on the namespace's loopback,
each with its own control port); the redirector of "h1" listens on 127.0.0.1:3261.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ahvlite.net import netlink
from ahvlite.storage import config
from ahvlite.storage.names import volume_target
from ahvlite.storage.tgt import Tgt, local_run
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, tgtd)")

NETNS = "ahvt-iscsi"
HOSTS = {"h1": "127.0.0.2", "h2": "127.0.0.3", "h3": "127.0.0.4"}
CONTROL = {"h1": 7101, "h2": 7102, "h3": 7103}
VOLUME = "vm-t-disk0-00000000.raw"
IQN = volume_target(VOLUME)
URL = f"iscsi://127.0.0.1:3261/{IQN}/1"


def in_ns(*argv: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{NETNS}", "--", *argv]


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - kept by the process
        self.procs[name] = subprocess.Popen(in_ns(*argv), stdout=log, stderr=log,
                                            start_new_session=True)

    def tgtd(self, host: str) -> None:
        self.spawn(host, ["tgtd", "-f", "-C", str(CONTROL[host]), "--iscsi",
                          f"portal={HOSTS[host]}:3260"])
        sock = Path(f"/run/tgtd/socket.{CONTROL[host]}")
        assert wait_for(sock.exists, 10, 0.05), f"tgtd of {host} did not start"
        t = Tgt(local_run(), control_port=CONTROL[host])
        t.export(IQN, str(self.tmp / VOLUME), ["127.0.0.1"])
        t.ensure_health_target(["127.0.0.1"])

    def status(self) -> dict:
        try:
            return json.loads((self.tmp / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def state(self, host: str) -> str | None:
        return next((t["state"] for t in self.status().get("targets", [])
                     if t["host"] == host), None)

    def qemu_io(self, *cmds: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        argv = ["qemu-io", "-f", "raw"]
        for c in cmds:
            argv += ["-c", c]
        return subprocess.run(in_ns(*argv, URL), capture_output=True, text=True,
                              timeout=timeout_s)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait(timeout=10)
        for port in CONTROL.values():
            for f in (f"/run/tgtd/socket.{port}", f"/run/tgtd/socket.{port}.lock"):
                Path(f).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iscsi")
    with open(tmp / VOLUME, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    netlink.create_netns(NETNS)
    netlink.set_link_up("lo", ns=NETNS)
    r = Rig(tmp)
    try:
        for h in HOSTS:
            r.tgtd(h)
        # A real-host interval of 1 s would do; shorter keeps the test quick.
        cfg = config.RedirectorConfig(
            host="h1", targets={h: f"{a}:3260" for h, a in HOSTS.items()},
            pool_dir=str(tmp), status_file=str(tmp / "status.json"), manage_target=False,
            check_interval_s=0.3, check_timeout_s=0.6)
        (tmp / "redirector.json").write_text(config.dump(cfg))
        r.spawn("redirector", [sys.executable, "-m", "ahvlite.cli.main", "storage",
                               "redirector", "run", "--config", str(tmp / "redirector.json")])
        assert wait_for(lambda: all(r.state(h) == "healthy" for h in HOSTS), 20, 0.1), \
            r.status()
        yield r
    finally:
        r.stop()
        netlink.delete_netns(NETNS)


def test_qemu_is_sent_to_the_local_target(rig):
    out = rig.qemu_io("write -P 0x11 0 64k", "read -P 0x11 0 64k")
    assert out.returncode == 0 and "Pattern verification failed" not in out.stdout, out
    assert [r["to"] for r in rig.status()["redirects"]] == ["h1"]


def test_a_dying_target_moves_the_session_and_no_write_is_lost(rig):
    # qemu-io sleeps between its writes with the event loop running; h1's target is
    # killed meanwhile: libiscsi reconnects to 127.0.0.1:3261 and is sent elsewhere.
    killer = subprocess.Popen(["sh", "-c", f"sleep 1.5; kill -9 {rig.procs['h1'].pid}"])
    out = rig.qemu_io("write -P 0x22 0 64k", "sleep 3000", "write -P 0x33 64k 64k",
                      "read -P 0x22 0 64k", "read -P 0x33 64k 64k")
    killer.wait(timeout=10)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verification failed" not in out.stdout and "error" not in out.stdout.lower()
    redirects = [r["to"] for r in rig.status()["redirects"]]
    assert wait_for(lambda: rig.state("h1") == "failed", 5, 0.1)
    assert redirects[-1] in ("h2", "h3"), redirects


def test_a_hung_target_fails_its_checks_and_gets_no_login(rig):
    # h1's target is dead (previous test). A stopped tgtd still accepts TCP connections
    # (the kernel answers), so only its failed NOP-Out checks keep logins away.
    os.kill(rig.procs["h2"].pid, signal.SIGSTOP)
    try:
        assert wait_for(lambda: rig.state("h2") == "failed", 10, 0.1), rig.status()
        assert rig.status()["choice"] == ["h3"]
        before = len(rig.status()["redirects"])
        for _ in range(3):
            out = subprocess.run(in_ns("qemu-img", "info", "-f", "raw", URL),
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
        assert wait_for(lambda: len(rig.status()["redirects"]) >= before + 3, 5, 0.1)
        tos = [r["to"] for r in rig.status()["redirects"][before:]]
        assert tos == ["h3", "h3", "h3"], tos
    finally:
        os.kill(rig.procs["h2"].pid, signal.SIGCONT)
    assert wait_for(lambda: rig.state("h2") == "healthy", 10, 0.1)


def test_garbage_does_not_stop_the_redirector(rig):
    for junk in (os.urandom(64), b"\x43" + b"\xff" * 47, b"GET / HTTP/1.0\r\n\r\n"):
        subprocess.run(in_ns(sys.executable, "-c",
                             "import socket,sys; s=socket.create_connection(('127.0.0.1',3261));"
                             f"s.sendall({junk!r}); s.shutdown(1); s.recv(100)"),
                       capture_output=True, timeout=20)
    assert rig.procs["redirector"].poll() is None
    out = rig.qemu_io("read -P 0x33 64k 64k")
    assert out.returncode == 0 and "verification failed" not in out.stdout
