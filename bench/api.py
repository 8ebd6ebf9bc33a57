"""The CLI as an API client, on a 3-host lab, against peers measured in the same run.

* Latency: ``ahvlite vm list --json`` (one call to any controller's API, which asks
  every host's libvirt) against ``virsh list --all`` run on each host in turn (what an
  admin without ahvlite does); and ``ahvlite --help`` against ``virsh --version``.
* Failover: SIGKILL of the leading controller process, then the time until a write
  (a task submission) is accepted again through the API by a client that knows all
  controllers (it retries the others by itself), and until the new leader has started
  that task. 10 rounds; p50 and max.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ahvlite.lab import lab
from ahvlite.lab.processes import pids_in_netns
from ahvlite.net import netlink
from ahvlite.spec.lab import LabSpec

NAME = "bapi"
SUBNET = "10.213.238.0/26"
RUNS = int(os.environ.get("AHVLITE_BENCH_API_RUNS", "10"))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AHVLITE_")}
    return {**env, **lab.client_env(NAME)}


def _timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True, env=env, timeout=120)
    return time.perf_counter() - t0


def latency() -> dict[str, float]:
    layout = lab.layout_of(NAME)
    env = _env()
    ahv = [sys.executable, "-m", "ahvlite.cli.main"]
    uris = [layout.libvirt_uri(h) for h in layout.hosts]
    _timed([*ahv, "vm", "list", "--json"], env)  # warm the controllers' connections
    ours = [_timed([*ahv, "vm", "list", "--json"], env) for _ in range(RUNS)]
    peers = [sum(_timed(["virsh", "-c", u, "list", "--all"]) for u in uris)
             for _ in range(RUNS)]
    helps = [_timed([*ahv, "--help"]) for _ in range(RUNS)]
    virsh_version = [_timed(["virsh", "--version"]) for _ in range(RUNS)]
    return {"vm_list_s": statistics.median(ours), "virsh_each_host_s": statistics.median(peers),
            "help_s": statistics.median(helps), "virsh_version_s": statistics.median(virsh_version)}


def _leader_pid(client: Any) -> tuple[str, int]:
    """The leading controller's name and the PID of its `controller run` process."""
    info = client.info()
    name = info.leader.name
    host = lab.layout_of(NAME).host(name)
    for p in pids_in_netns(netlink.netns_path(host.netns)):
        try:
            cmd = Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"controller" in cmd and b"run" in cmd and b"ahvlite.cli.main" in cmd:
            return name, p.pid
    raise RuntimeError(f"no controller process found on {name}")


def failover() -> tuple[list[float], list[float]]:
    from ahvlite.controller.api.client import ApiClient

    os.environ.update(lab.client_env(NAME))
    accepted, started = [], []
    with ApiClient.from_env(deadline_s=60) as client:
        for _ in range(RUNS):
            _, pid = _leader_pid(client)
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            task = client.submit("sleep", {"steps": 1, "step_s": 0})
            accepted.append(time.monotonic() - t0)
            while client.task(task.id).state == "queued":
                time.sleep(0.05)
            started.append(time.monotonic() - t0)
            # The supervisor restarts the killed controller; wait until all are back.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                members = client.get("/v1/controller/status").get("members", [])
                if len(members) == 3:
                    break
                time.sleep(0.5)
    return accepted, started


def main() -> None:
    os.environ.setdefault("AHVLITE_DRILL_KINDS", "1")  # the controllers offer `sleep`
    lab.up(LabSpec(name=NAME, hosts=3, subnet=SUBNET))
    try:
        lat = latency()
        acc, st = failover()
    finally:
        lab.down(NAME)
    print("API, 3-host lab:")
    print(f"  ahvlite vm list --json {lat['vm_list_s'] * 1000:.0f} ms vs virsh list --all on "
          f"each host in turn {lat['virsh_each_host_s'] * 1000:.0f} ms "
          f"(ratio {lat['vm_list_s'] / lat['virsh_each_host_s']:.2f}, goal within 2x)")
    print(f"  ahvlite --help {lat['help_s'] * 1000:.0f} ms vs virsh --version "
          f"{lat['virsh_version_s'] * 1000:.0f} ms (goal under 300 ms)")
    print(f"  leader SIGKILL -> write accepted again: p50 {statistics.median(acc):.2f} s, "
          f"max {max(acc):.2f} s; -> the new leader started it: p50 "
          f"{statistics.median(st):.2f} s, max {max(st):.2f} s ({len(acc)} rounds)")
    print(json.dumps({"latency": lat, "accepted_s": acc, "started_s": st}))


if __name__ == "__main__":
    main()
