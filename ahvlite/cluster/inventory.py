"""The cluster's hosts: reach them, report their state and facts; the checks and spec
changes of adding and removing one (stored by the leader's ``host.*`` task kinds)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ahvlite.clock import SYSTEM
from ahvlite.errors import AhvliteError, Conflict
from ahvlite.remote import facts as remote_facts
from ahvlite.remote.ssh import SshTarget
from ahvlite.remote.ssh import run as ssh_run
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.spec.facts import HostFacts
from ahvlite.spec.labels import DOMAIN_TYPE_LABEL
from ahvlite.spec.uri import check_uri
from ahvlite.virt import facts as virt_facts
from ahvlite.virt import guest
from ahvlite.virt.conn import connection

T = TypeVar("T")
RUNNING_STATES = ("running", "paused", "blocked")  # a QEMU process exists for these
R = TypeVar("R")


@dataclass(frozen=True)
class HostStatus:
    name: str
    uri: str
    state: str  # connected | unreachable | error
    hostname: str | None = None
    running_vms: int | None = None
    error: str | None = None
    latency_ms: float | None = None


def ssh_target(host: HostSpec, *, trust_on_first_use: bool = False) -> SshTarget | None:
    if host.ssh is None:
        return None
    return SshTarget(host=host.ssh.host, user=host.ssh.user, port=host.ssh.port,
                     key=host.ssh.key, known_hosts=host.ssh.known_hosts,
                     trust_on_first_use=trust_on_first_use)


def parallel(fn: Callable[[T], R], items: list[T], *, workers: int = 16) -> list[R]:
    """Map ``fn`` over hosts concurrently (I/O bound: connects, SSH round trips)."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def host_status(host: HostSpec, *, timeout_s: float = 5) -> HostStatus:
    t0 = SYSTEM.monotonic()
    try:
        with connection(host.uri, timeout_s=timeout_s) as conn:
            running = sum(1 for _, st in guest.list_domains(conn) if st in RUNNING_STATES)
            return HostStatus(host.name, host.uri, "connected", conn.getHostname(), running,
                              latency_ms=round((SYSTEM.monotonic() - t0) * 1000, 1))
    except AhvliteError as exc:
        return HostStatus(host.name, host.uri, "unreachable", error=exc.message)


def statuses(cluster: ClusterSpec, *, timeout_s: float = 5) -> list[HostStatus]:
    return parallel(lambda h: host_status(h, timeout_s=timeout_s), cluster.hosts)


def host_facts(host: HostSpec, *, timeout_s: float = 10) -> HostFacts:
    """libvirt facts plus, when the host has SSH, what only a shell can tell."""
    with connection(host.uri, timeout_s=timeout_s) as conn:
        facts = virt_facts.gather(conn, host.name)
    label = host.labels.get(DOMAIN_TYPE_LABEL)
    if label:
        facts.kvm_works = label == "kvm"
    target = ssh_target(host)
    if target is not None:
        try:
            facts.remote = remote_facts.gather(target)
        except AhvliteError as exc:
            facts.remote_error = exc.message
    return facts


def all_facts(cluster: ClusterSpec, names: list[str] | None = None, *,
              in_parallel: bool = True) -> list[HostFacts]:
    hosts = [cluster.host(n) for n in names] if names else list(cluster.hosts)
    if in_parallel:
        return parallel(host_facts, hosts)
    return [host_facts(h) for h in hosts]


def save_cluster(path: Path, spec: ClusterSpec) -> None:
    """Write a cluster FILE (a document for people and git; the cluster itself lives
    in the store and changes through `cluster apply` and the task kinds)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(spec.dump_yaml())
    os.replace(tmp, path)


def host_conflicts(cluster: ClusterSpec, host: HostSpec) -> None:
    """Conflict when ``host``'s name or URI is already one of the cluster's hosts."""
    if any(h.name == host.name for h in cluster.hosts):
        raise Conflict(f"host {host.name!r} is already in cluster {cluster.name!r}",
                       hint="pick another name, or `ahvlite host remove` it first")
    if any(h.uri == host.uri for h in cluster.hosts):
        other = next(h.name for h in cluster.hosts if h.uri == host.uri)
        raise Conflict(f"{host.uri} is already host {other!r}")


def check_reachable(host: HostSpec, *, trust_on_first_use: bool = False,
                    ssh: bool = True) -> None:
    """libvirt answers at the host's URI (and SSH, when it has an ssh section and
    ``ssh``); nothing is written but a trusted-on-first-use host key."""
    check_uri(host.uri)
    with connection(host.uri) as conn:
        conn.getHostname()
    target = ssh_target(host, trust_on_first_use=trust_on_first_use) if ssh else None
    if target is not None:
        ssh_run(target, ["true"], timeout_s=10)


def with_host(cluster: ClusterSpec, host: HostSpec) -> ClusterSpec:
    """The cluster with ``host`` added (not stored; see :func:`host_conflicts`)."""
    host_conflicts(cluster, host)
    return cluster.model_copy(update={"hosts": [*cluster.hosts, host]})


def check_no_running_vms(host: HostSpec) -> None:
    """Conflict while VMs run on ``host``, or while that cannot be checked."""
    try:
        with connection(host.uri, timeout_s=5) as conn:
            running = guest.list_domains(conn)
    except AhvliteError as exc:
        raise Conflict(f"cannot check whether VMs run on {host.name}: {exc.message}",
                       hint="pass --force to remove an unreachable host") from None
    active = [n for n, st in running if st in RUNNING_STATES]
    if active:
        raise Conflict(f"{len(active)} VMs run on {host.name}: {', '.join(active)}",
                       hint="migrate or stop them first (or --force)")


def without_host(cluster: ClusterSpec, name: str) -> ClusterSpec:
    """The cluster without host ``name`` (NotFound if it has none; not stored)."""
    cluster.host(name)
    return cluster.model_copy(update={"hosts": [h for h in cluster.hosts if h.name != name]})
