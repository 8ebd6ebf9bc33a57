"""`ahvlite vm create --start` on a 3-host lab vs ``virsh define`` + ``start`` of the
same domain XML on one host (the peer), and how often the operation went to each host.

Brings up its own 3-host lab (name ``bsnap``), measures, and takes it down again.

* ahvlite: ``ahvlite vm create vN --cpus 1 --memory-mib 128 --disk guest --nic br0
  --start`` through the lab's API (the leader's ``vm.spec.create`` task: HA admission,
  placement, a backing-file clone, define, start), timed from the CLI's start to its
  end, ``RUNS`` times in HA's default mode and ``RUNS`` times in guarantee mode;
* peer: the VM's own domain XML (its volume is kept), ``virsh -c URI define FILE`` then
  ``virsh -c URI start NAME`` on the host it was placed on.
* connections: per host, the libvirt connections the controllers opened and lent to
  operations during one create (``/v1/controller/connections``, summed over the
  controllers): a lease is one operation step going to that host.

The ratio peer/ahvlite is the share of a create that is the hypervisor's own work.
"""

from __future__ import annotations

import ipaddress
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from ahvlite.cluster import vms
from ahvlite.cluster.legacy import open_cluster_file as load_cluster
from ahvlite.lab import lab
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.lab import LabSpec
from ahvlite.virt import domains
from bench.labapi import ahv, connection_counts, count_delta, ok

NAME = "bsnap"
SUBNET = ipaddress.IPv4Network("10.213.231.0/26")
RUNS = 5
CREATE = ("--cpus", "1", "--memory-mib", "128", "--disk", "guest", "--nic", "br0", "--start")


def _peer(cluster: ClusterSpec, name: str) -> float:
    """Take ``name``'s definition away (volumes stay) and time virsh define + start of
    its XML on its host; the VM is left running there."""
    with vms.connect(cluster) as hosts:
        host, dom = hosts.find(name)
        uri = cluster.host(host).uri
        xml = domains.domain_xml(dom, inactive=True)
        domains.power_off(dom)
        domains.undefine_everything(dom)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.xml"
        path.write_text(xml)
        t0 = time.perf_counter()
        subprocess.run(["virsh", "-q", "-c", uri, "define", str(path)], check=True,
                       capture_output=True)
        subprocess.run(["virsh", "-q", "-c", uri, "start", name], check=True,
                       capture_output=True)
        return time.perf_counter() - t0


def _round(cluster: ClusterSpec, mode: str) -> None:
    ok(ahv(NAME, "ha", "set", "--mode", mode, "--json"))
    ours, peer = [], []
    counts: list[dict[str, dict[str, int]]] = []
    for i in range(RUNS):
        vm = f"{mode[0]}{i}"
        before = connection_counts(NAME)
        t0 = time.perf_counter()
        ok(ahv(NAME, "vm", "create", vm, *CREATE, "--json"))
        ours.append(time.perf_counter() - t0)
        counts.append(count_delta(before, connection_counts(NAME)))
        peer.append(_peer(cluster, vm))
        ok(ahv(NAME, "vm", "delete", vm, "--force", "--json"))
    p50, p50_peer = statistics.median(ours), statistics.median(peer)
    print(f"vm create --start (128 MiB, TCG), 3 lab hosts, HA mode {mode}, {RUNS} runs:")
    print(f"  ahvlite vm create --start:   p50 {p50:6.2f} s   max {max(ours):6.2f} s")
    print(f"  virsh define + start:        p50 {p50_peer:6.2f} s   max {max(peer):6.2f} s")
    print(f"  ratio peer/ahvlite (p50): {p50_peer / p50:.2f}")
    for i, c in enumerate(counts):
        per_host = ", ".join(f"{h} {v['leased']} leased/{v['opened']} opened"
                             for h, v in sorted(c.items()))
        print(f"  connections, run {i}: {per_host}")


def main() -> None:
    status = lab.up(LabSpec(name=NAME, hosts=3, subnet=SUBNET))
    try:
        cluster = load_cluster(Path(status["cluster_file"]))  # the peer's harness
        ok(ahv(NAME, "image", "import", status["guest"]["disk"], "guest", "--json"))
        for mode in ("default", "guarantee"):
            _round(cluster, mode)
    finally:
        lab.down(NAME)


if __name__ == "__main__":
    main()
