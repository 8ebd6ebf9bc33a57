"""A lab host's stand-in for a systemd unit: read ``/etc/ahvlite/controller.env`` (the
same file, with the same ``KEY=VALUE`` lines, that ``EnvironmentFile=`` reads on a real
host) and run the daemon with no arguments, as ``contrib/ahvlite-*.service`` do.

Run inside a lab host as ``python -m ahvlite.lab.unit controller|agent``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_FILE = Path("/etc/ahvlite/controller.env")
DAEMONS = ("controller", "agent")


def read_env_file(path: Path) -> dict[str, str]:
    """systemd's EnvironmentFile: ``KEY=VALUE`` lines, blank lines and ``#`` comments;
    a value may be quoted with single or double quotes."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in DAEMONS:
        sys.exit(f"usage: python -m ahvlite.lab.unit {'|'.join(DAEMONS)}")
    env = {**os.environ, **read_env_file(ENV_FILE)}
    argv = [sys.executable, "-m", "ahvlite.cli.main", sys.argv[1], "run"]
    os.execve(sys.executable, argv, env)


if __name__ == "__main__":
    main()
