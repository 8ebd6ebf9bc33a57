"""``ahvlite stats``: the newest per-host and per-VM figures the leader published."""

from __future__ import annotations

from typing import Annotated

import typer

from ahvlite.cli.controller import StoreOpt, store_url
from ahvlite.cli.output import console, emit_json, table
from ahvlite.errors import NotFound


def stats(
    host: Annotated[str | None, typer.Option("--host", help="Only this host.")] = None,
    vm: Annotated[str | None, typer.Option("--vm", help="Only this VM.")] = None,
    store: StoreOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Host utilization and VM CPU %, memory, disk and network rates."""
    from ahvlite.controller.coord import open_store
    from ahvlite.controller.hostmon import read_stats
    from ahvlite.controller.stats import select

    coord = open_store(store_url(store))
    try:
        records = select(read_stats(coord), host, vm)
    finally:
        coord.close()
    if (host or vm) and not records:
        raise NotFound(f"no stats for {'host ' + host if host else ''}"
                       f"{' ' if host and vm else ''}{'VM ' + vm if vm else ''}",
                       hint="the leader publishes every --stats-interval seconds; "
                            "see `ahvlite controller status`")
    if json_out:
        emit_json(records)
        return
    console.print(table("hosts", ["host", "cpus", "cpu %", "mem used MiB", "mem %", "VMs"],
                        [[r["host"], r["cpus"], r["cpu_pct"], r["memory_used_mib"],
                          r["memory_pct"], len(r["vms"])] for r in records]))
    rows = [[r["host"], v["name"], v["state"], v["cpu_pct"], v["memory_mib"],
             v["net_rx_bytes_per_s"], v["net_tx_bytes_per_s"], v["disk_read_bytes_per_s"],
             v["disk_write_bytes_per_s"]] for r in records for v in r["vms"]]
    console.print(table("VMs", ["host", "vm", "state", "cpu %", "mem MiB", "rx B/s", "tx B/s",
                                "read B/s", "write B/s"], rows))
