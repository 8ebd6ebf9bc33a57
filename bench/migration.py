"""Live migration and maintenance mode on a 3-host lab (name ``bmig``).

* Idle guest: the guest-visible gap (another lab host pings the guest every 10 ms while
  it migrates; the longest time between two replies) next to the downtime QEMU reports.
* A guest dirtying 40 MiB/s with the migration stream held to 20 MiB/s (memory writes
  faster than the link copies): plain ``virsh migrate --live --p2p`` with its defaults
  and a time limit (the peer) vs ``ahvlite vm migrate`` with its policy (downtime steps,
  auto-converge), and with ``--postcopy``: which converge, how long, what downtime.
The ahvlite side goes through the lab's API, as ``ahvlite vm migrate`` from an admin's
machine (the leader's ``vm.migrate`` task).

* ``maintenance enter`` on a host with 4 running VMs: time until the host is empty, one
  migration at a time vs two.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ahvlite.cluster import maintenance
from ahvlite.cluster.legacy import open_cluster_file as load_cluster
from ahvlite.lab import guests, lab, namespaces
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.lab import LabSpec
from ahvlite.spec.uri import check_uri
from bench.labapi import ahv, create_vm, ok

NAME = "bmig"
SUBNET = "10.213.251.0/26"
DIRTY_MIB_S = 40
LINK_MIB_S = 20
PEER_LIMIT_S = 90
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")


def wait_line(layout: Any, host: str, name: str, text: str, timeout_s: float = 300) -> None:
    log = layout.host(host).state_dir / f"var/log/libvirt/qemu/{name}-serial.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{name}: no {text!r} in {timeout_s} s")


def longest_gap_ms(ping_output: str) -> tuple[float, int, int]:
    """(longest time between two replies in ms, replies, highest sequence number)."""
    stamps, seqs = [], []
    for line in ping_output.splitlines():
        m = REPLY.match(line)
        if m:
            stamps.append(float(m.group(1)))
            seqs.append(int(m.group(2)))
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return (max(gaps) * 1000 if gaps else float("nan")), len(stamps), max(seqs, default=0)


def idle_gap(cluster: ClusterSpec, layout: Any, ip: str, to: str, pinger_host: str) -> \
        dict[str, Any]:
    h = layout.host(pinger_host)
    ping = subprocess.Popen(
        [*namespaces.enter_argv(h.netns, h.mnt_ns_file, h.uts_ns_file),
         "ping", "-D", "-i", "0.01", "-W", "1", ip],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(1)
    try:
        res = ok(ahv(NAME, "vm", "migrate", "idle", "--to", to, "--json"))
        time.sleep(1)
    finally:
        ping.send_signal(2)
        out, _ = ping.communicate(timeout=10)
    gap, replies, _ = longest_gap_ms(out)
    return {"to": to, "gap_ms": round(gap), "qemu_downtime_ms": res["downtime_ms"],
            "total_ms": res["total_ms"], "replies": replies}


def host_of(_cluster: ClusterSpec, name: str) -> str:
    return str(ok(ahv(NAME, "vm", "show", name, "--json"))["host"])


def virsh_peer(cluster: ClusterSpec, name: str, to: str) -> dict[str, Any]:
    """Plain virsh p2p live migration, default settings but the same link limit and TLS
    (ahvlite always encrypts); aborted (domjobabort) when not done in PEER_LIMIT_S."""
    src = cluster.host(host_of(cluster, name)).uri
    dst_ip = check_uri(cluster.host(to).uri).host
    argv = ["virsh", "-c", src, "migrate", "--live", "--p2p", "--persistent",
            "--undefinesource", "--unsafe", "--tls", "--bandwidth", str(LINK_MIB_S), name,
            f"qemu+tls://{dst_ip}/system", f"tcp://{dst_ip}"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=PEER_LIMIT_S)
        converged = proc.returncode == 0
    except subprocess.TimeoutExpired:
        subprocess.run(["virsh", "-c", src, "domjobabort", name], capture_output=True)
        proc.wait(timeout=60)
        converged = False
    took = time.monotonic() - t0
    downtime = None
    if converged:
        info = subprocess.run(["virsh", "-c", cluster.host(to).uri, "domjobinfo", "--completed",
                               name], capture_output=True, text=True).stdout
        m = re.search(r"Total downtime:\s+(\d+)", info)
        downtime = int(m.group(1)) if m else None
    return {"converged": converged, "took_s": round(took, 1), "downtime_ms": downtime,
            "still_on": host_of(cluster, name)}


def ahvlite_dirty(cluster: ClusterSpec, name: str, to: str, *options: str) -> dict[str, Any]:
    """``ahvlite vm migrate`` through the lab's API (the leader's vm.migrate task)."""
    t0 = time.monotonic()
    done = ahv(NAME, "vm", "migrate", name, "--to", to, "--bandwidth-mib", str(LINK_MIB_S),
               *options, "--json")
    out = json.loads(done.stdout)
    r = out if done.returncode == 0 else out.get("result")  # given up: how far it got
    if r is None:
        raise RuntimeError(f"vm migrate {name}: {out.get('message')}")
    return {"converged": r["converged"], "took_s": round(time.monotonic() - t0, 1),
            "downtime_ms": r["downtime_ms"], "iterations": r["iterations"],
            "throttle_max_pct": r["throttle_max_pct"], "postcopy": r["postcopy_used"],
            "reason": r["reason"], "still_on": host_of(cluster, name)}


def evacuate(cluster: ClusterSpec, path: Path, host: str, parallel: int) -> dict[str, Any]:
    t0 = time.monotonic()
    rep = maintenance.enter(cluster, host, parallel=parallel)
    empty_s = time.monotonic() - t0
    t1 = time.monotonic()
    back = maintenance.exit_(cluster, host, restore=True,
                             parallel=parallel)
    return {"parallel": parallel, "empty_s": round(empty_s, 1), "moved": len(rep.moved),
            "restore_s": round(time.monotonic() - t1, 1),
            "restored": len(back["restored"])}


def main() -> None:
    status = lab.up(LabSpec(name=NAME, hosts=3, subnet=SUBNET))
    results: dict[str, Any] = {}
    try:
        layout = lab.layout_of(NAME)
        path = Path(status["cluster_file"])
        cluster = load_cluster(path)
        ok(ahv(NAME, "image", "import", status["guest"]["disk"], "guest", "--json"))
        addrs = status["guest_addresses"]
        create_vm(NAME, guests.vm_spec("idle", addrs[0]), "h1")
        create_vm(NAME, guests.vm_spec("dirty", addrs[1], dirty_mib_s=DIRTY_MIB_S), "h1")
        for i in range(4):
            create_vm(NAME, guests.vm_spec(f"m{i}"), "h3")
        wait_line(layout, "h1", "idle", "AHVLITE-GUEST-READY")
        wait_line(layout, "h1", "dirty", "AHVLITE-GUEST-READY")
        for i in range(4):
            wait_line(layout, "h3", f"m{i}", "ahvlite-init: starting")

        results["idle"] = [idle_gap(cluster, layout, addrs[0].split("/")[0], to, "h3")
                           for to in ("h2", "h1", "h2")]
        results["dirty_virsh"] = virsh_peer(cluster, "dirty", "h2")
        results["dirty_ahvlite"] = ahvlite_dirty(cluster, "dirty", "h2")
        back = "h1" if host_of(cluster, "dirty") == "h2" else "h2"
        results["dirty_ahvlite_postcopy"] = ahvlite_dirty(cluster, "dirty", back,
                                                          "--postcopy")
        # Quiet the dirtier before the maintenance runs: it is not what they measure.
        ok(ahv(NAME, "vm", "stop", "dirty", "--force", "--json"))
        results["maintenance"] = [evacuate(cluster, path, "h3", 1),
                                  evacuate(cluster, path, "h3", 2)]
    finally:
        lab.down(NAME)
    report(results)


def report(r: dict[str, Any]) -> None:
    print("live migration, 128 MiB TCG guests, 3 lab hosts:")
    for x in r["idle"]:
        print(f"  idle guest -> {x['to']}: longest ping gap {x['gap_ms']} ms (10 ms pings), "
              f"QEMU downtime {x['qemu_downtime_ms']} ms, total {x['total_ms']} ms")
    print(f"  dirtying guest ({DIRTY_MIB_S} MiB/s writes, link held to {LINK_MIB_S} MiB/s):")
    for key, label in (("dirty_virsh", f"virsh migrate --live --p2p (limit {PEER_LIMIT_S} s)"),
                       ("dirty_ahvlite", "ahvlite vm migrate (policy)"),
                       ("dirty_ahvlite_postcopy", "ahvlite vm migrate --postcopy")):
        x = r[key]
        extra = (f", {x['iterations']} iterations, throttle max {x['throttle_max_pct']}%"
                 if "iterations" in x else "")
        print(f"    {label:48} converged={x['converged']} in {x['took_s']} s, downtime "
              f"{x['downtime_ms']} ms{extra}" + (f" ({x['reason']})" if x.get("reason")
                                                 else ""))
    for x in r["maintenance"]:
        print(f"  maintenance enter, 4 VMs, {x['parallel']} at a time: empty in "
              f"{x['empty_s']} s; exit --restore in {x['restore_s']} s")
    peer, ours = r["dirty_virsh"], r["dirty_ahvlite"]
    if ours["converged"] and not peer["converged"]:
        print(f"  ratio: the peer did not converge in {PEER_LIMIT_S} s; ahvlite did in "
              f"{ours['took_s']} s")
    elif ours["converged"] and peer["converged"]:
        print(f"  ratio peer/ahvlite time: {peer['took_s'] / max(ours['took_s'], 0.1):.2f}")
    print(json.dumps(r), file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "120")
    main()
