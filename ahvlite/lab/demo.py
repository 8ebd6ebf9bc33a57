"""The main job on the lab: one guest per host, then guest-to-guest ping across hosts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ahvlite.lab import guests, lab
from ahvlite.virt import guest
from ahvlite.virt.conn import connection


def run(name: str, *, report: Callable[[str], None]) -> dict[str, Any]:
    layout = lab.layout_of(name)
    state = lab.state_of(name)
    booted: list[tuple[guests.LabGuest, float]] = []
    started = time.monotonic()
    for host, address in zip(layout.hosts, layout.guest_addresses, strict=False):
        gname = f"demo-{host.name}"
        report(f"booting {gname} on {host.name} from the shared disk image ({address})")
        booted.append((guests.boot_from_disk(layout, state, host, gname, str(address)),
                       time.monotonic()))
    rows = []
    for g, t0 in booted:
        report(f"waiting for {g.name} to be ready")
        guests.wait_ready(layout, g)
        with connection(layout.libvirt_uri(layout.host(g.host))) as conn:
            st = guest.state(guest.lookup(conn, g.name))
        rows.append({"name": g.name, "host": g.host, "address": g.address, "state": st,
                     "boot_s": round(time.monotonic() - t0, 1)})
    pings = []
    for i, (src, _) in enumerate(booted):
        dst = booted[(i + 1) % len(booted)][0]
        if dst is src:
            continue
        report(f"{src.name} ({src.host}) pings {dst.name} ({dst.host})")
        rc, out = guests.console_run(layout, src, f"ping -c 3 -W 2 {dst.ip}", timeout_s=30)
        summary = next((line for line in out.splitlines() if "packets" in line), out[-120:])
        pings.append({"from": src.name, "to": dst.name, "ok": rc == 0, "detail": summary})
    return {"guests": rows, "pings": pings,
            "ok": bool(pings) and all(p["ok"] for p in pings),
            "elapsed_s": round(time.monotonic() - started, 1)}
