"""Controller failover: 3 controllers on a 3-member ZooKeeper ensemble of our own.

Each round ends the acting leader and times until another controller has *acted*
(written the fenced leader record under its new token). SIGKILL is the case that
matters (the session must expire: bounded by the session timeout); a clean SIGTERM
handover, measured in the same run, is the peer: what failover costs when nothing
has to time out. The killed controller is restarted so every round starts with 3.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ahvlite.controller.coord import DEFAULT_SESSION_TIMEOUT_S, Coordinator, open_store
from ahvlite.controller.daemon import LEADER_KEY
from ahvlite.lab import processes
from ahvlite.lab.services import controller_argv, start_local_ensemble
from ahvlite.lab.state import ProcessRecord

ROUNDS = 10


def _acting(coord: Coordinator) -> dict[str, Any] | None:
    rec = coord.get(LEADER_KEY)
    return json.loads(rec.value) if rec else None


def _wait_new(coord: Coordinator, token: int | None, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        a = _acting(coord)
        if a is not None and a["token"] != token:
            return a
        time.sleep(0.01)
    raise TimeoutError("no new leader acted")


def _rounds(coord: Coordinator, recs: dict[str, ProcessRecord], url: str, base: Path,
            sig: int) -> list[float]:
    took = []
    for _ in range(ROUNDS):
        leader = _wait_new(coord, None)
        time.sleep(0.5)  # let the standbys settle into the election
        os.kill(recs[leader["name"]].pid, sig)
        t0 = time.monotonic()
        _wait_new(coord, leader["token"])
        took.append(time.monotonic() - t0)
        processes.stop([recs[leader["name"]]], grace_s=5)
        recs[leader["name"]] = processes.spawn(
            controller_argv(leader["name"], url), log=base / f"{leader['name']}.log", host="",
            role=leader["name"])
    return took


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="ahvlite-bench-failover-"))
    ens = start_local_ensemble(base / "zk", 3)
    recs: dict[str, ProcessRecord] = {}
    try:
        url = ens.url("bench")
        for i in (1, 2, 3):
            recs[f"ctl{i}"] = processes.spawn(controller_argv(f"ctl{i}", url),
                                              log=base / f"ctl{i}.log", host="", role=f"ctl{i}")
        coord = open_store(url)
        try:
            kill = _rounds(coord, recs, url, base, signal.SIGKILL)
            term = _rounds(coord, recs, url, base, signal.SIGTERM)
        finally:
            coord.close()
        k50, kmax = statistics.median(kill), max(kill)
        t50 = statistics.median(term)
        print(f"controller failover, 3 controllers, 3-member ZooKeeper, session timeout "
              f"{DEFAULT_SESSION_TIMEOUT_S:g} s, {ROUNDS} rounds each:")
        print(f"  SIGKILL leader -> new leader acts (ahvlite): p50 {k50:.2f} s, "
              f"max {kmax:.2f} s")
        print(f"  SIGTERM handover (peer: nothing times out): p50 {t50:.2f} s, "
              f"max {max(term):.2f} s")
        print(f"  ratio SIGKILL/SIGTERM p50: {k50 / t50:.1f}; SIGKILL p50 / session timeout: "
              f"{k50 / DEFAULT_SESSION_TIMEOUT_S:.2f}")
    finally:
        processes.stop(list(recs.values()))
        ens.stop()
    shutil.rmtree(base, ignore_errors=True)  # kept when a round failed: logs say why


if __name__ == "__main__":
    main()
