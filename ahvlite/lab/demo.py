"""The main job on the lab: one guest per host, then guest-to-guest ping across hosts."""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ahvlite.clock import SYSTEM
from ahvlite.cluster import network as cnet
from ahvlite.cluster.legacy import open_cluster_file as load_cluster
from ahvlite.lab import guests, lab
from ahvlite.lab.layout import HostLayout
from ahvlite.virt import guest
from ahvlite.virt.conn import connection

DEMO_NETWORKS = (("vm-blue", 101), ("vm-red", 102))


def run(name: str, *, report: Callable[[str], None]) -> dict[str, Any]:
    layout = lab.layout_of(name)
    state = lab.state_of(name)
    started = SYSTEM.monotonic()
    plan = [(host, f"demo-{host.name}", str(address))
            for host, address in zip(layout.hosts, layout.guest_addresses, strict=False)]
    for host, gname, address in plan:
        report(f"booting {gname} on {host.name} from the shared disk image ({address})")

    def boot_and_wait(item: tuple[HostLayout, str, str]) -> tuple[guests.LabGuest, float]:
        host, gname, address = item
        t0 = SYSTEM.monotonic()
        g = guests.boot_from_disk(layout, state, host, gname, address)
        guests.wait_ready(layout, g)
        return g, SYSTEM.monotonic() - t0

    # Hosts boot in parallel, as they would in a real cluster.
    with ThreadPoolExecutor(max_workers=len(plan) or 1) as pool:
        results = list(pool.map(boot_and_wait, plan))
    booted = [g for g, _ in results]
    guests.record(layout, state, booted)
    rows = []
    for g, boot_s in results:
        with connection(layout.libvirt_uri(layout.host(g.host))) as conn:
            st = guest.lookup(conn, g.name).state()
        rows.append({"name": g.name, "host": g.host, "address": g.address, "state": st,
                     "boot_s": round(boot_s, 1)})
        report(f"{g.name} on {g.host} ready at {g.address} after {boot_s:.1f} s")
    pings = []
    for i, src in enumerate(booted):
        dst = booted[(i + 1) % len(booted)]
        if dst is src:
            continue
        report(f"{src.name} ({src.host}) pings {dst.name} ({dst.host})")
        rc, out = guests.console_run(layout, src, f"ping -c 3 -W 2 {dst.ip}", timeout_s=30)
        match = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
        summary = f"{match[2]}/{match[1]} replies" if match else out[-120:]
        pings.append({"from": src.name, "to": dst.name, "ok": rc == 0, "detail": summary})
    # Host networking: two VLAN networks in the cluster file, then what
    # each host's OVS reports (bond, members, active member, VM ports with VLANs).
    spec = load_cluster(layout.cluster_file)
    for net_name, vlan in DEMO_NETWORKS:
        if spec.network.network(net_name) is None:
            report(f"creating VLAN network {net_name} (VLAN {vlan})")
            spec = cnet.create_network(layout.cluster_file, spec, name=net_name, vlan=vlan)
    report("reading host networking (net show)")
    net_show = cnet.show(spec)
    return {"guests": rows, "pings": pings, "net_show": net_show,
            "ok": bool(pings) and all(p["ok"] for p in pings),
            "elapsed_s": round(SYSTEM.monotonic() - started, 1)}
