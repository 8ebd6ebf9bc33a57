"""Raw counters of one host: one bulk ``getAllDomainStats`` plus node CPU and memory.

Counters only (nanoseconds, bytes, KiB), stamped with a monotonic time; turning two
samples into rates is pure logic in ``sched/stats.py``. A driver that lacks a
group (libvirt's test driver has no node memory stats) leaves those fields None.
"""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from ahvlite.clock import SYSTEM
from ahvlite.virt.conn import libvirt_errors
from ahvlite.virt.guest import STATE_NAMES

_GROUPS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
           | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU
           | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)


@dataclass(frozen=True)
class DomainCounters:
    name: str
    uuid: str
    state: str
    vcpus: int | None
    cpu_time_ns: int | None
    memory_kib: int | None  # balloon current (what the guest has)
    memory_max_kib: int | None
    net_rx_bytes: int | None
    net_tx_bytes: int | None
    disk_rd_bytes: int | None
    disk_wr_bytes: int | None


@dataclass(frozen=True)
class HostCounters:
    at_monotonic: float
    cpus: int
    cpu_busy_ns: int | None  # user + kernel (+ iowait is idle time, not work)
    cpu_total_ns: int | None
    memory_total_kib: int | None
    memory_free_kib: int | None  # free + buffers + cached
    domains: tuple[DomainCounters, ...]


def _sum(rec: dict[str, int], group: str, field: str) -> int | None:
    count = rec.get(f"{group}.count")
    if count is None:
        return None
    return sum(int(rec.get(f"{group}.{i}.{field}", 0)) for i in range(int(count)))


def _domain(dom: libvirt.virDomain, rec: dict[str, int]) -> DomainCounters:
    vcpus = rec.get("vcpu.current")
    return DomainCounters(
        name=dom.name(), uuid=dom.UUIDString(),
        state=STATE_NAMES.get(int(rec.get("state.state", -1)), "unknown"),
        vcpus=int(vcpus) if vcpus is not None else None,
        cpu_time_ns=rec.get("cpu.time"), memory_kib=rec.get("balloon.current"),
        memory_max_kib=rec.get("balloon.maximum"),
        net_rx_bytes=_sum(rec, "net", "rx.bytes"), net_tx_bytes=_sum(rec, "net", "tx.bytes"),
        disk_rd_bytes=_sum(rec, "block", "rd.bytes"),
        disk_wr_bytes=_sum(rec, "block", "wr.bytes"))


def sample_host(conn: libvirt.virConnect) -> HostCounters:
    """Every domain's counters in one call, and the node's CPU and memory."""
    with libvirt_errors("domain stats"):
        records = conn.getAllDomainStats(_GROUPS, 0)
        domains = tuple(_domain(dom, rec) for dom, rec in records)
        cpus = int(conn.getInfo()[2])
    busy = total = mem_total = mem_free = None
    try:
        cpu = conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
        busy = int(cpu.get("user", 0) + cpu.get("kernel", 0))
        total = busy + int(cpu.get("idle", 0) + cpu.get("iowait", 0))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            with libvirt_errors("node CPU stats"):
                raise
    try:
        mem = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
        mem_total = int(mem["total"])
        mem_free = int(mem.get("free", 0) + mem.get("buffers", 0) + mem.get("cached", 0))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            with libvirt_errors("node memory stats"):
                raise
    return HostCounters(SYSTEM.monotonic(), cpus, busy, total, mem_total, mem_free, domains)
