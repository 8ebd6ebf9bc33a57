"""Facts of 3 lab hosts gathered in parallel vs. one after another (the peer), as the
CLI gets them: through the API (``GET /v1/facts`` vs ``GET /v1/facts?serial=true``),
gathered by the controller that answers.

Brings up its own 3-host lab (name ``bench``), measures, and takes it down again.
The ratio serial/parallel is the speed-up parallel gathering buys.
"""

from __future__ import annotations

import statistics
import time

from ahvlite.controller.api.client import ApiClient
from ahvlite.lab import lab
from ahvlite.spec.lab import LabSpec

ROUNDS = 5


def main() -> None:
    lab.up(LabSpec(name="bench", hosts=3, subnet="10.213.250.0/26"))
    try:
        with ApiClient.from_env(env=lab.client_env("bench")) as api:
            facts = api.get("/v1/facts")  # warm libvirt caches and SSH host keys once
            assert len(facts) == 3, facts
            par, ser = [], []
            for r in range(ROUNDS):
                order = [True, False] if r % 2 == 0 else [False, True]
                for parallel in order:
                    t0 = time.perf_counter()
                    api.get("/v1/facts", **({} if parallel else {"serial": "true"}))
                    (par if parallel else ser).append(time.perf_counter() - t0)
        p, s = statistics.median(par), statistics.median(ser)
        print(f"host facts, 3 lab hosts (libvirt + SSH) through the API, median of {ROUNDS}:")
        print(f"  in parallel (ahvlite):        {p * 1000:8.1f} ms")
        print(f"  one after another (peer):     {s * 1000:8.1f} ms")
        print(f"  ratio serial/parallel: {s / p:.2f}")
    finally:
        lab.down("bench")


if __name__ == "__main__":
    main()
