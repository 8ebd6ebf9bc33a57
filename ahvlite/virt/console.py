"""A guest's serial console over libvirt's stream API: run a command in a guest, which
works across hosts (no network path to the guest needed)."""

from __future__ import annotations

import re
import secrets
import time

import libvirt

from ahvlite.errors import OperationFailed, OperationTimeout
from ahvlite.virt.conn import libvirt_errors
from ahvlite.virt.guest import Guest


class Console:
    """A serial console over libvirt's stream API: send lines, read until a pattern."""

    def __init__(self, conn: libvirt.virConnect, guest: Guest) -> None:
        dom = guest.dom
        self.dom = dom
        self.stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        with libvirt_errors(f"open console of {dom.name()}"):
            dom.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self.buffer = ""

    def close(self) -> None:
        try:
            self.stream.finish()
        except libvirt.libvirtError:
            self.stream.abort()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, text: str) -> None:
        data = text.encode()
        while data:
            with libvirt_errors(f"write console of {self.dom.name()}"):
                sent = self.stream.send(data)
            if sent == -2:
                time.sleep(0.01)
                continue
            data = data[sent:]

    def _poll(self) -> bool:
        with libvirt_errors(f"read console of {self.dom.name()}"):
            chunk = self.stream.recv(4096)
        if chunk == -2 or chunk is None:
            return False
        if isinstance(chunk, bytes):
            if not chunk:
                raise OperationFailed(f"console of {self.dom.name()} closed")
            self.buffer += chunk.decode(errors="replace")
            return True
        return False

    def expect(self, pattern: str, *, timeout_s: float) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            match = regex.search(self.buffer)
            if match:
                self.buffer = self.buffer[match.end():]
                return match
            if time.monotonic() > deadline:
                tail = self.buffer[-500:]
                raise OperationTimeout(
                    f"{self.dom.name()}: no {pattern!r} on the console in {timeout_s:.0f} s;"
                    f" last output: {tail!r}")
            if not self._poll():
                time.sleep(0.05)

    def run(self, command: str, *, timeout_s: float = 30) -> tuple[int, str]:
        """Run a shell command in the guest; return its exit status and output."""
        tag = secrets.token_hex(4)
        # The markers are printed by the guest's shell; the echoed command line holds
        # the literal ``$?``, so only the real end marker carries a number.
        self.send(f"\recho B{tag}; {command}; echo E{tag} $?\r")
        self.expect(rf"(?m)^B{tag}\r?$", timeout_s=timeout_s)
        end = self.expect(rf"(?s)(.*?)E{tag} (\d+)", timeout_s=timeout_s)
        return int(end.group(2)), end.group(1).strip()
