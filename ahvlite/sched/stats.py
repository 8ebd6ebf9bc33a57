"""Counters -> rates: per-VM CPU %, memory, disk and network rates, host utilization.

Pure: two samples of a host's counters in, plain records out; a bounded history per
host keeps the recent ones in memory. The newest record per host also goes to the
store (``stats/HOST``, published by that host's own controller) for ``ahvlite stats``,
ADS and HA.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from ahvlite.virt.stats import DomainCounters, HostCounters


@dataclass(frozen=True)
class VmStats:
    name: str
    uuid: str
    state: str
    vcpus: int | None
    cpu_pct: float | None  # of the VM's own vCPUs: 100 = all of them busy
    memory_mib: float | None
    memory_max_mib: float | None
    net_rx_bytes_per_s: float | None
    net_tx_bytes_per_s: float | None
    disk_read_bytes_per_s: float | None
    disk_write_bytes_per_s: float | None


@dataclass(frozen=True)
class HostStats:
    host: str
    at: float  # wall clock, seconds
    interval_s: float | None
    cpus: int
    cpu_pct: float | None
    memory_total_mib: float | None
    memory_used_mib: float | None
    memory_pct: float | None
    vms: tuple[VmStats, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(prev: int | None, cur: int | None, dt_s: float) -> float | None:
    if prev is None or cur is None or dt_s <= 0 or cur < prev:  # a restart resets counters
        return None
    return (cur - prev) / dt_s


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def vm_stats(prev: DomainCounters | None, cur: DomainCounters, dt_s: float) -> VmStats:
    p = prev if prev is not None and prev.uuid == cur.uuid else None

    def was(field: str) -> int | None:
        return None if p is None else getattr(p, field)

    cpu = _rate(was("cpu_time_ns"), cur.cpu_time_ns, dt_s)
    cpu_pct = None
    if cpu is not None and cur.vcpus:
        cpu_pct = round(100 * cpu / 1e9 / cur.vcpus, 1)
    return VmStats(
        cur.name, cur.uuid, cur.state, cur.vcpus, cpu_pct, _mib(cur.memory_kib),
        _mib(cur.memory_max_kib),
        _rate(was("net_rx_bytes"), cur.net_rx_bytes, dt_s),
        _rate(was("net_tx_bytes"), cur.net_tx_bytes, dt_s),
        _rate(was("disk_rd_bytes"), cur.disk_rd_bytes, dt_s),
        _rate(was("disk_wr_bytes"), cur.disk_wr_bytes, dt_s))


def host_stats(host: str, prev: HostCounters | None, cur: HostCounters,
               wall_at: float) -> HostStats:
    dt = cur.at_monotonic - prev.at_monotonic if prev is not None else 0.0
    cpu_pct = None
    if (prev is not None and None not in (prev.cpu_busy_ns, prev.cpu_total_ns,
                                          cur.cpu_busy_ns, cur.cpu_total_ns)):
        busy = cur.cpu_busy_ns - prev.cpu_busy_ns  # type: ignore[operator]
        total = cur.cpu_total_ns - prev.cpu_total_ns  # type: ignore[operator]
        cpu_pct = round(100 * busy / total, 1) if total > 0 else None
    used = mem_pct = None
    if cur.memory_total_kib is not None and cur.memory_free_kib is not None:
        used = cur.memory_total_kib - cur.memory_free_kib
        mem_pct = round(100 * used / cur.memory_total_kib, 1) if cur.memory_total_kib else None
    before = {d.uuid: d for d in prev.domains} if prev is not None else {}
    vms = tuple(vm_stats(before.get(d.uuid), d, dt) for d in cur.domains)
    return HostStats(host, wall_at, dt or None, cur.cpus, cpu_pct,
                     _mib(cur.memory_total_kib), _mib(used), mem_pct, vms)


class History:
    """The last ``size`` records per host, oldest first."""

    def __init__(self, size: int = 360) -> None:
        self.size = size
        self._by_host: dict[str, deque[HostStats]] = {}

    def add(self, s: HostStats) -> None:
        self._by_host.setdefault(s.host, deque(maxlen=self.size)).append(s)

    def series(self, host: str) -> list[HostStats]:
        return list(self._by_host.get(host, ()))

    def latest(self, host: str) -> HostStats | None:
        q = self._by_host.get(host)
        return q[-1] if q else None


def _num(value: Any, *, whole: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) if whole else True


_VM_NUMBERS = ("cpu_pct", "memory_mib", "memory_max_mib", "net_rx_bytes_per_s",
               "net_tx_bytes_per_s", "disk_read_bytes_per_s", "disk_write_bytes_per_s")
_HOST_NUMBERS = ("interval_s", "cpu_pct", "memory_total_mib", "memory_used_mib",
                 "memory_pct")


def parse_host_stats(raw: Any) -> HostStats | None:
    """A ``stats/HOST`` record read back from the store, or None when it is not one
    (a record from outside this process is never trusted to have the right shape)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("host"), str):
        return None
    if not _num(raw.get("at")) or not _num(raw.get("cpus"), whole=True):
        return None
    if any(raw.get(k) is not None and not _num(raw.get(k)) for k in _HOST_NUMBERS):
        return None
    vms = raw.get("vms")
    if not isinstance(vms, list):
        return None
    parsed = []
    for v in vms:
        if not (isinstance(v, dict) and isinstance(v.get("name"), str)
                and isinstance(v.get("uuid"), str) and isinstance(v.get("state"), str)):
            return None
        if v.get("vcpus") is not None and not _num(v.get("vcpus"), whole=True):
            return None
        if any(v.get(k) is not None and not _num(v.get(k)) for k in _VM_NUMBERS):
            return None
        parsed.append(VmStats(v["name"], v["uuid"], v["state"], v.get("vcpus"),
                              *(v.get(k) for k in _VM_NUMBERS)))
    return HostStats(raw["host"], float(raw["at"]), raw.get("interval_s"), int(raw["cpus"]),
                     raw.get("cpu_pct"), raw.get("memory_total_mib"),
                     raw.get("memory_used_mib"), raw.get("memory_pct"), tuple(parsed))


def select(records: list[dict[str, Any]], host: str | None, vm: str | None) -> list[dict[str, Any]]:
    """Filter stored host records for ``ahvlite stats --host/--vm``."""
    out = []
    for r in records:
        if host and r["host"] != host:
            continue
        if vm:
            vms = [v for v in r["vms"] if v["name"] == vm]
            if not vms:
                continue
            r = {**r, "vms": vms}
        out.append(r)
    return out
