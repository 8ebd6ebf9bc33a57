"""Facts of 3 lab hosts gathered in parallel vs. one after another (the peer).

Brings up its own 3-host lab (name ``bench``), measures, and takes it down again.
The ratio serial/parallel is the speed-up parallel gathering buys.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from ahvlite.cluster import inventory
from ahvlite.cluster.legacy import open_cluster_file as load_cluster
from ahvlite.lab import lab
from ahvlite.spec.lab import LabSpec

ROUNDS = 5


def main() -> None:
    status = lab.up(LabSpec(name="bench", hosts=3, subnet="10.213.250.0/26"))
    try:
        cluster = load_cluster(Path(status["cluster_file"]))
        inventory.all_facts(cluster)  # warm both libvirt caches and SSH host keys once
        par, ser = [], []
        for r in range(ROUNDS):
            order = [True, False] if r % 2 == 0 else [False, True]
            for parallel in order:
                t0 = time.perf_counter()
                inventory.all_facts(cluster, in_parallel=parallel)
                (par if parallel else ser).append(time.perf_counter() - t0)
        p, s = statistics.median(par), statistics.median(ser)
        print(f"host facts, 3 lab hosts (libvirt + SSH), median of {ROUNDS}:")
        print(f"  in parallel (ahvlite):        {p * 1000:8.1f} ms")
        print(f"  one after another (peer):     {s * 1000:8.1f} ms")
        print(f"  ratio serial/parallel: {s / p:.2f}")
    finally:
        lab.down("bench")


if __name__ == "__main__":
    main()
