"""A lab host's stand-in for a systemd unit: read ``/etc/ahvlite/controller.env`` (the
same file, with the same ``KEY=VALUE`` lines, that ``EnvironmentFile=`` reads on a real
host) and run the daemon with no arguments, as ``contrib/ahvlite-*.service`` do.

Run inside a lab host as ``python -m ahvlite.lab.unit controller|agent|netagent``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ahvlite.envfile import read_env_file

ENV_FILE = Path("/etc/ahvlite/controller.env")
DAEMONS = ("controller", "agent", "netagent")


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in DAEMONS:
        sys.exit(f"usage: python -m ahvlite.lab.unit {'|'.join(DAEMONS)}")
    env = {**os.environ, **read_env_file(ENV_FILE)}
    argv = [sys.executable, "-m", "ahvlite.cli.main", sys.argv[1], "run"]
    os.execve(sys.executable, argv, env)


if __name__ == "__main__":
    main()
