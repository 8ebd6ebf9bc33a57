"""``ahvlite stats``: the newest per-host and per-VM figures each host's controller
published (through the API)."""

from __future__ import annotations

from typing import Annotated

import typer

from ahvlite.cli import api
from ahvlite.cli.output import console, emit_json, table


def stats(
    host: Annotated[str | None, typer.Option("--host", help="Only this host.")] = None,
    vm: Annotated[str | None, typer.Option("--vm", help="Only this VM.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Host utilization and VM CPU %, memory, disk and network rates."""
    records = api.get("/v1/stats", host=host, vm=vm)
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
