"""ADS's view of the live cluster, from plain data (pure): hosts (CPU capacity = cores
x 100, memory, schedulable unless in maintenance or not answering), running VMs (memory,
CPU demand history in percent of a core = the stats' ``cpu_pct`` x vCPUs, pinned), and
the storage service of each host: the VM labelled ``ahvlite.io/role=cvm`` (allocation =
its vCPUs x 100, demand = its CPU). The CVM's load is attributed to the host's other VMs
by their share of disk bytes, so moving an I/O-heavy VM moves that load to the
destination's CVM. ``ahvlite.cluster.adsinput`` reads the facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ahvlite.sched.model import Host, Problem, Rules, Vm
from ahvlite.sched.stats import History
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.labels import ROLE_LABEL

RUNNING = ("running", "paused", "blocked")  # states that hold CPU and memory on a host

Records = Mapping[str, list[dict[str, Any]]]  # host -> HostStats dicts, oldest first


class VmFacts(Protocol):
    """What the snapshot reads of a VM (``cluster.vms.VmInfo`` has it)."""

    name: str
    host: str
    state: str
    vcpus: int
    memory_mib: int
    labels: dict[str, str]
    pinned: bool


def problem_from(cluster: ClusterSpec, infos: Sequence[VmFacts], records: Records, *,
                 memory_mib: Mapping[str, int], closed: set[str], rules: Rules) -> Problem:
    """Build the Problem from VM facts and stats records (no I/O)."""
    hosts = []
    for h in cluster.hosts:
        series = records.get(h.name, [])
        cpus = int(series[-1]["cpus"]) if series else 0
        reachable = bool(series) and h.name in memory_mib
        cvm = next((i for i in infos if i.host == h.name and i.state in RUNNING
                    and i.labels.get(ROLE_LABEL) == "cvm"), None)
        hosts.append(Host(
            h.name, float(max(cpus, 1) * 100), max(memory_mib.get(h.name, 0), 1),
            storage_cpu_alloc_pct=float(cvm.vcpus * 100) if cvm else 0.0,
            storage_cpu_history_pct=_cpu_series(series, cvm.name) if cvm else (),
            schedulable=reachable and h.name not in closed))
    seen: set[str] = set()
    running = []
    for i in infos:
        # Mid-migration a VM shows on both hosts; the source (listed first) counts.
        if i.state in RUNNING and i.host in memory_mib and i.name not in seen:
            seen.add(i.name)
            running.append(i)
    out = []
    for info in running:
        series = records.get(info.host, [])
        role = info.labels.get(ROLE_LABEL)
        cvm = next((i for i in running if i.host == info.host
                    and i.labels.get(ROLE_LABEL) == "cvm"), None)
        storage: tuple[float, ...] = ()
        if cvm is not None and role != "cvm":
            storage = _io_share(series, info.name, cvm.name)
        out.append(Vm(info.name, info.host, info.memory_mib, _cpu_series(series, info.name),
                      storage, pinned=info.pinned or role == "cvm", labels=dict(info.labels)))
    return Problem(tuple(hosts), tuple(out), rules)


def _vm_in(record: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((v for v in record.get("vms", []) if v["name"] == name), None)


def _cpu_series(series: list[dict[str, Any]], name: str) -> tuple[float, ...]:
    out = []
    for rec in series:
        v = _vm_in(rec, name)
        if v is not None and v.get("cpu_pct") is not None:
            out.append(float(v["cpu_pct"]) * int(v.get("vcpus") or 1))
    return tuple(out)


def _io(v: dict[str, Any]) -> float:
    return float(v.get("disk_read_bytes_per_s") or 0) + float(v.get("disk_write_bytes_per_s")
                                                                or 0)


def _io_share(series: list[dict[str, Any]], name: str, cvm: str) -> tuple[float, ...]:
    out = []
    for rec in series:
        me, c = _vm_in(rec, name), _vm_in(rec, cvm)
        if me is None or c is None or c.get("cpu_pct") is None:
            continue
        total = sum(_io(v) for v in rec["vms"] if v["name"] != cvm)
        cvm_load = float(c["cpu_pct"]) * int(c.get("vcpus") or 1)
        out.append(cvm_load * _io(me) / total if total > 0 else 0.0)
    return tuple(out)


def records_of(history: History, cluster: ClusterSpec) -> dict[str, list[dict[str, Any]]]:
    """The controller's in-memory stats history as snapshot records."""
    return {h.name: [s.to_dict() for s in history.series(h.name)] for h in cluster.hosts}
