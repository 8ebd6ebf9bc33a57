"""A lab host's watchdog: a process of its own in the host's namespaces, standing in for
``/dev/watchdog`` (softdog would reset the whole machine, every lab host with it).

The host agent connects to its unix socket, arms it with ``arm SECONDS`` and feeds it
with ``feed`` lines; ``V`` disarms it (the magic close). A connection that ends without
``V`` leaves it armed, like the device. If nobody feeds it for its timeout it fires as
a reset would: SIGKILL to every QEMU of this host (the processes in its network
namespace whose program is qemu-system-*) and to the agent that armed it (found by
the socket's peer credentials), then it disarms until an agent arms it again.

Run as ``python -m ahvlite.lab.watchdogd --socket /run/ahvlite/watchdog.sock``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

log = logging.getLogger("watchdogd")


class LabWatchdog:
    def __init__(self, path: str) -> None:
        self.path = path
        self.timeout_s = 0.0
        self.armed = False
        self.fed = time.monotonic()
        self.agent_pid: int | None = None
        self.fired = 0
        self._mu = threading.Lock()

    def serve(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(self.path)
        os.chmod(self.path, 0o600)
        srv.listen(4)
        threading.Thread(target=self._watch, daemon=True, name="watch").start()
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", cred)[0]
        buf = b""
        with conn:
            while data := conn.recv(4096):
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._line(line.decode(errors="replace").strip(), pid)

    def _line(self, line: str, pid: int) -> None:
        with self._mu:
            if line.startswith("arm "):
                try:
                    self.timeout_s = max(float(line[4:]), 1.0)
                except ValueError:
                    return
                self.armed, self.fed, self.agent_pid = True, time.monotonic(), pid
                log.warning("armed by pid %d, %g s", pid, self.timeout_s)
            elif line == "feed" and self.armed:
                self.fed, self.agent_pid = time.monotonic(), pid
            elif line == "V":
                self.armed = False
                log.warning("disarmed by pid %d", pid)

    def _watch(self) -> None:
        while True:
            time.sleep(0.05)
            with self._mu:
                due = self.armed and time.monotonic() - self.fed > self.timeout_s
                if due:
                    self.armed = False
                    victims = qemu_pids() + ([self.agent_pid] if self.agent_pid else [])
            if due:
                self.fired += 1
                log.warning("not fed for %g s: resetting (SIGKILL %s)", self.timeout_s,
                            " ".join(str(p) for p in victims))
                for pid in victims:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def qemu_pids() -> list[int]:
    """QEMUs in this network namespace (this lab host's)."""
    mine = os.stat("/proc/self/ns/net").st_ino
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino != mine:
                continue
            exe = os.readlink(f"/proc/{entry}/exe")
        except OSError:
            continue
        if os.path.basename(exe).startswith("qemu-system"):
            found.append(int(entry))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    LabWatchdog(args.socket).serve()


if __name__ == "__main__":
    main()
