"""A host that goes silent behind a pooled SSH connection (it lost power: no RST ever
comes) makes reads fail within the target's timeout instead of hanging.

A real sshd on loopback; "silent" is its connection processes stopped (SIGSTOP): the
kernel still holds the TCP connection open, nothing answers on it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ahvlite.errors import HostUnreachable
from ahvlite.remote import ssh
from tests.waiting import wait_for

pytestmark = pytest.mark.functional


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found += [int(entry), *_descendants(int(entry))]
    return found


@pytest.fixture
def sshd(tmp_path):
    host_key, user_key = tmp_path / "host_key", tmp_path / "id"
    for key in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "id.pub").read_text())
    port = _free_port()
    config = tmp_path / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                      f"AuthorizedKeysFile {tmp_path}/authorized_keys\n"
                      "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
                      "PidFile none\nSubsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    with open(tmp_path / "sshd.log", "w") as log:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=log)
    known = tmp_path / "known_hosts"
    target = ssh.SshTarget("127.0.0.1", port=port, key=user_key, known_hosts=known,
                           trust_on_first_use=True, timeout_s=2)
    try:
        yield proc, target
    finally:
        for pid in [proc.pid, *_descendants(proc.pid)]:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def body() -> None:
        started = time.monotonic()
        try:
            out["value"] = fn()
        except Exception as exc:  # the test inspects it
            out["error"] = exc
        out["took_s"] = time.monotonic() - started

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize("call", ["read_file", "run", "put_file"])
def test_a_silent_host_behind_a_pooled_connection_fails_within_the_timeout(sshd, tmp_path,
                                                                          call):
    proc, target = sshd
    pool = ssh.SshPool()
    assert wait_for(lambda: _answers(target, pool), 10, 0.1)
    assert ssh.read_file(target, "/proc/sys/kernel/hostname", pool=pool).strip()
    connection_procs = _descendants(proc.pid)
    assert connection_procs, "sshd serves the pooled connection from child processes"
    for pid in connection_procs:
        with contextlib.suppress(ProcessLookupError):  # a short-lived helper may be gone
            os.kill(pid, signal.SIGSTOP)
    local = tmp_path / "payload"
    local.write_text("x")
    calls = {
        "read_file": lambda: ssh.read_file(target, "/proc/sys/kernel/hostname", pool=pool),
        "run": lambda: ssh.run(target, ["true"], timeout_s=60, pool=pool),
        "put_file": lambda: ssh.put_file(target, local, str(tmp_path / "copied"), pool=pool),
    }
    thread, out = _in_thread(calls[call])
    thread.join(15)
    assert not thread.is_alive(), f"{call} still hangs 15 s after the host went silent"
    assert isinstance(out.get("error"), HostUnreachable), out
    assert out["took_s"] < 2 * target.timeout_s + 1, out
    # The silent connection left the pool: the next call connects afresh.
    assert target not in pool._clients


def _answers(target: ssh.SshTarget, pool: ssh.SshPool) -> bool:
    try:
        ssh.run(target, ["true"], pool=pool)
    except HostUnreachable:
        return False
    return True
