"""IPAM allocation rate on a real one-member ZooKeeper: 1000 NICs allocated one
allocate() per NIC, and in batches of 100 (a deploy's shape), against the peer of raw
``create`` of 1000 keys through the same store client in the same run (the
floor: one round trip per key, no reads, no uniqueness across keys). Also the reader's
side: all allocations of the network read back (what a host's DHCP responder does on
each ``ipam/gen`` change)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from ahvlite.cluster import ipam
from ahvlite.cluster.ipamplan import NicWant
from ahvlite.controller.coord import MUST_NOT_EXIST, open_store
from ahvlite.lab.services import start_local_ensemble
from ahvlite.spec.errors import build
from ahvlite.spec.network import NetworkSpec

N = 1000
BATCH = 100
NETWORK = build(NetworkSpec, networks=[{"name": "blue", "vlan": 10, "ipam": {
    "subnet": "10.10.0.0/20", "gateway": "10.10.0.1",
    "pools": [{"start": "10.10.1.0", "end": "10.10.8.255"}]}}])


def _wants(tag: int) -> list[NicWant]:
    return [NicWant("blue", f"52:54:{tag:02x}:{i >> 16:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}",
                    f"vm{i}", f"u{tag}-{i}") for i in range(N)]


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="ahvlite-bench-ipam-"))
    ens = start_local_ensemble(base / "zk", 1)
    try:
        rates = {}
        for label, size in (("one NIC per allocate", 1), (f"batches of {BATCH}", BATCH)):
            store = open_store(ens.url(f"ipam{size}"))
            try:
                wants = _wants(size)
                t0 = time.monotonic()
                for i in range(0, N, size):
                    ipam.allocate(store, NETWORK, wants[i:i + size], by="bench", now=0.0)
                rates[label] = N / (time.monotonic() - t0)
                t0 = time.monotonic()
                got = ipam.allocations(store, "blue")
                read_s = time.monotonic() - t0
                assert len(got) == N and len({a.ip for a in got}) == N
            finally:
                store.close()
        store = open_store(ens.url("raw"))
        try:
            t0 = time.monotonic()
            for i in range(N):
                store.put(f"raw/k{i}", b"{}", MUST_NOT_EXIST)
            raw = N / (time.monotonic() - t0)
        finally:
            store.close()
        one, batch = rates["one NIC per allocate"], rates[f"batches of {BATCH}"]
        print(f"IPAM on a 1-member ZooKeeper, {N} NICs: one per allocate {one:.0f} "
              f"addresses/s, batches of {BATCH} {batch:.0f} addresses/s; raw create of "
              f"{N} keys {raw:.0f} keys/s (batch/raw {batch / raw:.2f}x, "
              f"single/raw {one / raw:.2f}x); all {N} allocations read back in "
              f"{read_s * 1000:.0f} ms")
    finally:
        ens.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
