"""What every process of this machine shows on its command line (/proc/PID/cmdline)."""

from __future__ import annotations

import os
from pathlib import Path


def assert_on_no_command_line(secret: str) -> int:
    """Fail if any process's command line holds ``secret``; how many were read (a
    process may end while we look: it is skipped)."""
    seen = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        seen += 1
        assert secret.encode() not in cmdline, (pid, cmdline)
    return seen
