"""Restart a lab daemon when it dies, as systemd's ``Restart=on-failure`` does on a real
host (the controller's and agent's units): a lab host's agent killed by its watchdog,
or a crashed controller, comes back after ``--restart-s``. SIGTERM/SIGINT are passed to
the daemon and end the supervisor, so ``lab daemon stop`` stops it for good.

Run as ``python -m ahvlite.lab.supervise [--restart-s 1] -- ARGV...``.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restart-s", type=float, default=1.0)
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        parser.error("no program to run")
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        child = subprocess.Popen(argv)
        code = child.wait()
        if stopping or code == 0:
            sys.exit(0 if stopping else code)
        print(f"supervise: {argv[0]} exited with {code}; restarting in {args.restart_s:g} s",
              file=sys.stderr, flush=True)
        time.sleep(args.restart_s)
        if stopping:
            sys.exit(0)


if __name__ == "__main__":
    main()
