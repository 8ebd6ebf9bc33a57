"""The ahvlite CLI run as its own process, the way an admin's shell runs it.

Every test that drives the CLI as a program goes through :func:`ahvlite` (or
:func:`ahv` for a lab's API), so how the child is started, what it inherits and how
long it may take are decided here once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ARGV = (sys.executable, "-m", "ahvlite.cli.main")


def ahvlite(*argv: str, env: Mapping[str, str] | None = None,
            extra_env: Mapping[str, str] | None = None, timeout_s: float = 120,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``ahvlite ARGV`` with ``env`` (None: this process's environment) and
    ``extra_env`` on top; output captured as text; TimeoutExpired after ``timeout_s``."""
    full = None if env is None and not extra_env else {
        **(os.environ if env is None else env), **(extra_env or {})}
    return subprocess.run([*ARGV, *argv], capture_output=True, text=True,
                          timeout=timeout_s, env=full, cwd=cwd)


def succeeded(r: subprocess.CompletedProcess[str], *, as_json: bool = True) -> Any:
    """A run that must have worked: exit 0 and no traceback; its JSON output (or the
    run itself with ``as_json=False``)."""
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout) if as_json else r


def without_settings() -> dict[str, str]:
    """This process's environment without its AHVLITE_* settings, so a client reaches
    only what the test names (the drill task kinds stay: the tests' controllers run them)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("AHVLITE_") or k == "AHVLITE_DRILL_KINDS"}


def ahv(lab_name: str, *argv: str, timeout_s: float = 300,
        extra_env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``ahvlite ARGV`` as a client of lab ``lab_name``'s API (the environment
    `ahvlite lab env` prints), from the root namespace, like an admin's machine."""
    from ahvlite.lab import lab

    env = without_settings()
    env.update(lab.client_env(lab_name))
    env.update({"COLUMNS": "200", **(extra_env or {})})
    return ahvlite(*argv, env=env, timeout_s=timeout_s)
