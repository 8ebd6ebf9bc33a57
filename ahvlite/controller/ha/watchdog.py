"""The host's watchdog, as the agent feeds it.

* ``/dev/watchdog`` (softdog or a hardware timer): opened on the first feed (that arms
  it), timeout set with ``WDIOC_SETTIMEOUT``; if nobody feeds it for the timeout, the
  kernel resets the machine. Closing it without the magic ``V`` leaves it running, so a
  crashed agent still gets its host reset.
* ``unix:PATH``: the lab's per-host watchdog process (``ahvlite.lab.watchdogd``), same
  contract over a stream socket; when it fires it kills that host's QEMUs and the agent.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import threading

from ahvlite.errors import InvalidSpec, MissingDependency, OperationFailed

WDIOC_KEEPALIVE = 0x80045705
WDIOC_SETTIMEOUT = 0xC0045706
DEVICE = "/dev/watchdog"


class DeviceWatchdog:
    """A kernel watchdog device."""

    def __init__(self, timeout_s: float, path: str = DEVICE) -> None:
        self.path = path
        self.timeout_s = float(max(1, round(timeout_s)))
        self._fd: int | None = None

    @property
    def armed(self) -> bool:
        return self._fd is not None

    def feed(self) -> None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise MissingDependency(f"no watchdog at {self.path}",
                                        hint="load softdog (modprobe softdog) or enable "
                                             "the hardware watchdog") from None
            except OSError as exc:
                raise OperationFailed(f"cannot open {self.path}: {exc}") from None
            got = fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT,
                              struct.pack("i", int(self.timeout_s)))
            # The driver may round the timeout: fencing waits for what it really is.
            self.timeout_s = float(struct.unpack("i", got)[0])
        fcntl.ioctl(self._fd, WDIOC_KEEPALIVE, struct.pack("i", 0))

    def disarm(self) -> None:
        if self._fd is not None:
            os.write(self._fd, b"V")  # magic close: the driver stops the timer
            os.close(self._fd)
            self._fd = None


class SocketWatchdog:
    """The lab's watchdog process, reached over a unix stream socket."""

    def __init__(self, timeout_s: float, path: str) -> None:
        self.path = path
        self.timeout_s = float(timeout_s)
        self._sock: socket.socket | None = None
        self._mu = threading.Lock()

    @property
    def armed(self) -> bool:
        return self._sock is not None

    def _send(self, line: str) -> None:
        assert self._sock is not None
        self._sock.sendall(line.encode() + b"\n")

    def feed(self) -> None:
        with self._mu:
            try:
                if self._sock is None:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.settimeout(1.0)
                    s.connect(self.path)
                    self._sock = s
                    self._send(f"arm {self.timeout_s:g}")
                self._send("feed")
            except OSError as exc:
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
                raise OperationFailed(f"watchdog {self.path}: {exc}") from None

    def disarm(self) -> None:
        with self._mu:
            if self._sock is not None:
                try:
                    self._send("V")
                finally:
                    self._sock.close()
                    self._sock = None


def open_watchdog(spec: str, timeout_s: float) -> DeviceWatchdog | SocketWatchdog:
    """``/dev/watchdog`` (or another device path) or ``unix:/path/to/socket``."""
    if spec.startswith("unix:/"):
        return SocketWatchdog(timeout_s, spec[len("unix:"):])
    if spec.startswith("/dev/"):
        return DeviceWatchdog(timeout_s, spec)
    raise InvalidSpec("watchdog", spec, "a device like /dev/watchdog, or unix:/PATH "
                      "(the lab's watchdog process)")
