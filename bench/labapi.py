"""The CLI as a client of a lab's API, for benches (what an admin's machine runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from ahvlite.lab import lab


def ahv(lab_name: str, *argv: str, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    """``ahvlite ARGV`` with lab ``lab_name``'s client environment (`ahvlite lab env`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AHVLITE_")}
    env.update(lab.client_env(lab_name))
    env.setdefault("COLUMNS", "120")
    return subprocess.run([sys.executable, "-m", "ahvlite.cli.main", *argv],
                          capture_output=True, text=True, timeout=timeout_s, env=env)


def ok(r: subprocess.CompletedProcess[str]) -> Any:
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(r.args[3:])}: exit {r.returncode}: "
                           f"{r.stderr.strip() or r.stdout.strip()}")
    return json.loads(r.stdout)


def create_vm(lab_name: str, spec: Any, host: str, *, start: bool = True) -> dict[str, Any]:
    """A full VmSpec (serial log, fw_cfg ...) made by the leader: the vm.spec.create task
    `ahvlite vm create` submits."""
    task = ok(ahv(lab_name, "task", "submit", "vm.spec.create", "-p",
                  f"spec={spec.model_dump_json()}", "-p", f"host={host}", "-p",
                  f"start={json.dumps(start)}", "--json"))
    return dict(ok(ahv(lab_name, "task", "wait", task["id"], "--json"))["result"])


def connection_counts(lab_name: str) -> dict[str, dict[str, int]]:
    """Per lab host: libvirt connections the lab's controllers opened to it and lent to
    operations (``/v1/controller/connections`` of every controller, summed)."""
    from ahvlite.controller.api.client import connection_counts as counts
    from ahvlite.controller.api.config import load_client_config

    env = {k: v for k, v in os.environ.items() if not k.startswith("AHVLITE_")}
    env.update(lab.client_env(lab_name))
    return counts(load_client_config(env))


def count_delta(before: dict[str, dict[str, int]],
                after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """``after`` - ``before``, per host and counter."""
    return {h: {k: v - before.get(h, {}).get(k, 0) for k, v in c.items()}
            for h, c in after.items()}
