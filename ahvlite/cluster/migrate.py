"""Live-migrate one VM across the cluster: pre-checks, target choice, a per-VM lock, the
job steered by the convergence policy, and a result. ADS, HA and maintenance call
:func:`migrate_vm`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from ahvlite.clock import SYSTEM
from ahvlite.cluster import convergence, cpulevel, schedulable, vms
from ahvlite.cluster.convergence import ConvergenceSettings
from ahvlite.errors import AhvliteError, Conflict, InvalidSpec, OperationFailed
from ahvlite.sched.place import Want, place
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.labels import PINNED_LABEL, is_pinned
from ahvlite.spec.uri import check_uri
from ahvlite.spec.vm import check_name
from ahvlite.virt import cpu, migration, storage
from ahvlite.virt.guest import Guest
from ahvlite.virt.migration import JobSample, MigrationJob
from ahvlite.virt.xml.domain import Domain

LAB_LABEL = "lab"  # hosts of an ahvlite lab carry it; their shared dir is one filesystem
MIGRATABLE_STATES = ("running", "paused")
# After an interrupted run aborts its job, how long to wait for the worker thread to
# leave migrateToURI3 before the connection under it is closed.
ABORT_WAIT_S = 30.0


@dataclass(frozen=True)
class MigrationProgress:
    """One poll of a running migration, for progress bars and logs."""

    vm: str
    source: str
    destination: str
    elapsed_s: float
    iteration: int
    data_total_bytes: int | None
    data_remaining_bytes: int | None
    dirty_rate_bytes_s: int | None
    transfer_rate_bytes_s: int | None
    expected_downtime_ms: int | None
    max_downtime_ms: int
    throttle_pct: int
    stalled: bool
    postcopy: bool
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class MigrateResult:
    vm: str
    source: str
    destination: str
    converged: bool
    aborted: bool
    reason: str | None
    total_ms: int | None
    downtime_ms: int | None  # reported by QEMU (actual, when converged)
    data_transferred_bytes: int | None
    iterations: int | None
    throttle_max_pct: int
    postcopy_used: bool
    max_downtime_ms_used: int
    checks: dict[str, str] = field(default_factory=dict)
    encrypted: bool = True  # the stream went over QEMU's TLS (VIR_MIGRATE_TLS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MigrationAborted(OperationFailed):
    """The migration was given up (did not converge, or timed out); the VM still runs
    on its source host. ``result`` says how far it got."""

    def __init__(self, result: MigrateResult) -> None:
        super().__init__(f"migration of {result.vm} from {result.source} to "
                         f"{result.destination} aborted: {result.reason}; "
                         f"{result.vm} keeps running on {result.source}",
                         hint="raise --max-downtime-ms, allow --postcopy, give more "
                              "--bandwidth-mib, or quiesce the guest's memory writes")
        self.result = result

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "result": self.result.to_dict()}


# -- locking ------------------------------------------------------------------------

@contextmanager
def vm_migration_lock(cluster: ClusterSpec, name: str, *, key: str | None = None) -> \
        Iterator[None]:
    """One migration of VM ``name`` at a time, cluster-wide (the store's lock). The
    libvirt job check in :func:`migrate_vm` catches one started outside ahvlite.
    ``key`` (the VM's UUID) names the lock when given; otherwise the name, which must
    be a valid VM name."""
    if key is None:
        key = check_name("name", name)
    with cluster.state.lock(f"migrate-{key}",
                            busy=f"{name} is already being migrated (by another ahvlite "
                                 "run)", hint="wait for that migration to finish"):
        yield


# -- pre-checks ---------------------------------------------------------------------

def pinned_reason(labels: dict[str, str], config: Domain) -> str | None:
    """Why a VM must stay on its host, or None."""
    devices = config.devices
    pci = [h for h in (devices.hostdevs if devices is not None else ()) if h.type == "pci"]
    if pci:
        addrs = [a for a in (h.address for h in pci) if a]
        return f"it has PCI host device(s) {', '.join(addrs) or '(passthrough)'}"
    if is_pinned(labels):
        return f"it carries the label {PINNED_LABEL}=true"
    return None


@dataclass
class _Vm:
    name: str
    host: str
    dom: Guest
    info: vms.VmInfo
    config: Domain  # its live definition


def _check_destination(hosts: vms.Hosts, vm: _Vm, dest: str, *,
                       maintenance: set[str], pending_mib: int = 0) -> dict[str, str]:
    """Everything that must hold on ``dest``; raises on the first failure, else returns
    what was checked (for the result)."""
    cluster = hosts.cluster
    cluster.host(dest)
    checks: dict[str, str] = {}
    if dest == vm.host:
        raise InvalidSpec("to", dest, f"a host other than {vm.name}'s current host "
                          f"{vm.host}")
    if dest in maintenance:
        raise Conflict(f"host {dest} is in maintenance mode and takes no VMs",
                       hint=f"`ahvlite host maintenance exit {dest}` first, or pick "
                            "another host")
    conn = hosts.conn(dest)
    # CPU: the VM's live CPU definition must run on the destination.
    vm_cpu = cpu.domain_cpu(vm.config)
    if vm_cpu is not None:
        target = cpulevel.host_cpu(cluster, dest, conn).target
        result = cpu.compare_cpu(conn, target, vm_cpu)
        if not result.compatible:
            lacking = ", ".join(result.missing) or result.message or result.result
            raise Conflict(f"{vm.name}'s CPU ({vm_cpu.model}) cannot run on {dest}: "
                           f"{lacking}", hint="`ahvlite cluster cpu apply` sets a CPU level "
                                              "every host runs (takes effect at power cycle)")
        checks["cpu"] = f"{vm_cpu.model}: {result.result} on {dest}"
    else:
        checks["cpu"] = "not checked (the VM has no named CPU model)"
    # Memory: what the VM holds now must be free there.
    cap = next(c for c in vms.capacities(hosts) if c.name == dest)
    need = vm.info.current_memory_mib
    if cap.free_mib - pending_mib < need:
        raise Conflict(f"host {dest} has {cap.free_mib - pending_mib} MiB free, {vm.name} "
                       f"needs {need} MiB", hint="pick another host or free memory there")
    checks["memory"] = f"{need} MiB needed, {cap.free_mib - pending_mib} MiB free on {dest}"
    # Networks: every NIC's bridge (and VLAN network) is defined for the destination.
    nets = vms.networks_of(cluster, dest)
    bridges = {b.name for b in nets.bridges}
    for nic in vm.info.nics:
        if nic["bridge"] and nic["bridge"] not in bridges:
            raise Conflict(f"{vm.name}'s NIC {nic['mac']} is on bridge {nic['bridge']}, "
                           f"which host {dest} does not have (it has "
                           f"{', '.join(sorted(bridges)) or 'none'})")
        net = nic.get("network")
        if net and net not in bridges and nets.network(net) is None:
            raise Conflict(f"{vm.name}'s NIC {nic['mac']} is on network {net}, which is "
                           f"not defined for host {dest}")
    checks["networks"] = f"{len(vm.info.nics)} NIC(s) fit {dest}"
    # Storage: the shared pool is there and active.
    if vm.info.disks:
        pool_name = vms.shared_pool(cluster)
        try:
            storage.lookup_pool(conn, pool_name)
        except AhvliteError as exc:
            raise Conflict(f"shared pool {pool_name} is not usable on {dest}: {exc.message}",
                           hint="every host must see the shared pool") from None
        checks["storage"] = f"pool {pool_name} active on {dest}"
    return checks


def _find_vm(hosts: vms.Hosts, name: str) -> _Vm:
    host, dom = hosts.find(name)
    return _Vm(name=name, host=host, dom=dom, info=vms.info_of(host, dom),
               config=dom.config())


def check_movable(vm: _Vm) -> None:
    """The VM itself may be live-migrated (running, not pinned)."""
    reason = pinned_reason(vm.info.labels, vm.config)
    if reason:
        raise Conflict(f"{vm.name} is pinned to {vm.host}: {reason}; pinned VMs are never "
                       "live-migrated", hint="shut it down instead (maintenance mode does)")
    if vm.info.state not in MIGRATABLE_STATES:
        raise Conflict(f"{vm.name} is {vm.info.state} on {vm.host}; live migration moves a "
                       "running VM", hint="start it first, or just start it on the other "
                                          "host later (its disks are on the shared pool)")


def choose_target(hosts: vms.Hosts, vm: _Vm, *, maintenance: set[str],
                  pending_mib: dict[str, int] | None = None) -> tuple[str, dict[str, str]]:
    """The host with the most free memory that passes every check."""
    pending = pending_mib or {}
    checks: dict[str, dict[str, str]] = {}

    def check(dest: str) -> None:  # it checks the memory itself
        checks[dest] = _check_destination(hosts, vm, dest, maintenance=maintenance,
                                          pending_mib=pending.get(dest, 0))

    caps = [c for c in vms.capacities(hosts) if c.name != vm.host]
    dest = place(caps, Want(vm.name, vm.info.memory_mib), need_free_mib=0,
                 pending_mib=pending, accept=check, down=hosts.errors)
    return dest, checks[dest]


# -- the migration ------------------------------------------------------------------

def _dest_uris(cluster: ClusterSpec, dest: str) -> tuple[str, str]:
    uri = cluster.host(dest).uri
    info = check_uri(uri)
    if not info.host:
        raise InvalidSpec(f"hosts[{dest}].uri", uri, "a remote URI (qemu+tls://ADDR/system "
                          "or qemu+ssh://...) for a migration destination")
    return migration.peer_uri(uri), f"tcp://{info.host}"


def migrate_vm(cluster: ClusterSpec, name: str, *, to: str | None = None,
               settings: ConvergenceSettings | None = None,
               on_progress: Callable[[MigrationProgress], None] | None = None,
               admit: Callable[[str, str], None] | None = None,
               ) -> MigrateResult:
    """Live-migrate VM ``name`` to ``to`` (default: the host with most free memory that
    passes the checks). Raises before anything moves when a check fails, and
    :class:`MigrationAborted` when the policy gives up (the VM stays on its source).
    ``admit(vm, destination)`` runs under the VM's lock once the destination is known,
    right before the job starts, and raises to refuse the move (HA admission)."""
    check_name("name", name)
    settings = settings or ConvergenceSettings()
    maintenance = schedulable.unschedulable_hosts(cluster.state)
    with vms.connect(cluster) as hosts:
        # Look the VM up before locking: a mistyped name leaves no lock file behind, and
        # the lock follows the VM (its UUID), not whatever name was typed.
        found = _find_vm(hosts, name)
        with vm_migration_lock(cluster, name, key=found.info.uuid):
            # Again under the lock: a migration that just ended may have moved it.
            vm = _find_vm(hosts, name)
            return _migrate_locked(cluster, hosts, vm, to, settings, maintenance,
                                   on_progress, admit)


def _migrate_locked(cluster: ClusterSpec, hosts: vms.Hosts, vm: _Vm, to: str | None,
                    settings: ConvergenceSettings, maintenance: set[str],
                    on_progress: Callable[[MigrationProgress], None] | None,
                    admit: Callable[[str, str], None] | None = None) -> MigrateResult:
    name = vm.name
    check_movable(vm)
    if to is not None:
        checks = _check_destination(hosts, vm, to, maintenance=maintenance)
        dest = to
    else:
        dest, checks = choose_target(hosts, vm, maintenance=maintenance)
    if migration.has_active_job(vm.dom):
        raise Conflict(f"{name} has a libvirt job running on {vm.host} (another "
                       "migration?)", hint="wait for it, or `virsh domjobabort`")
    if admit is not None:
        admit(name, dest)
    lab = LAB_LABEL in cluster.host(vm.host).labels and \
        LAB_LABEL in cluster.host(dest).labels
    dest_uri, migrate_uri = _dest_uris(cluster, dest)
    job = MigrationJob(vm.dom, dest_uri=dest_uri, migrate_uri=migrate_uri,
                       options=settings.options(same_kernel_storage=lab))
    return _run(job, settings, hosts, vm, dest, checks, on_progress)


def _run(job: MigrationJob, settings: ConvergenceSettings, hosts: vms.Hosts, vm: _Vm,
         dest: str, checks: dict[str, str],
         on_progress: Callable[[MigrationProgress], None] | None) -> MigrateResult:
    history: list[JobSample] = []
    started = SYSTEM.monotonic()
    job.start()
    try:
        abort_reason, downtime_ms, postcopy = _steer(
            job, settings, history, vm, dest, started, on_progress)
    except BaseException:
        # Interrupted (Ctrl-C, a failing callback): a p2p job would go on unsteered in
        # the source libvirtd; stop it unless the guest already runs at the destination.
        # Then let the worker thread leave migrateToURI3 before the caller closes the
        # connection it runs on (bounded: a hung libvirtd must not hang us forever).
        if not job.done and not job.postcopy_started:
            with contextlib.suppress(AhvliteError):
                job.abort()
        with contextlib.suppress(Exception):
            job.wait(ABORT_WAIT_S)
        raise
    throttle = max((s.throttle_pct for s in history), default=0)
    last = history[-1] if history else None
    if job.error is not None:
        if abort_reason is None:
            raise job.error
        raise MigrationAborted(MigrateResult(
            vm=vm.name, source=vm.host, destination=dest, converged=False, aborted=True,
            reason=abort_reason, total_ms=int((SYSTEM.monotonic() - started) * 1000),
            downtime_ms=None,
            data_transferred_bytes=last.data_processed_bytes if last else None,
            iterations=last.iteration if last else None, throttle_max_pct=throttle,
            postcopy_used=postcopy, max_downtime_ms_used=downtime_ms, checks=checks,
            encrypted=job.options.tls))
    # (An abort that came too late loses the race: the VM moved, and that is a success.)
    done = migration.completed_stats(hosts.conn(dest), vm.name)
    # After post-copy the destination's completed stats are sparse; the last poll and
    # our own clock fill what is missing.
    return MigrateResult(
        vm=vm.name, source=vm.host, destination=dest, converged=True, aborted=False,
        reason=None,
        total_ms=done.get("time_elapsed") or int((SYSTEM.monotonic() - started) * 1000),
        downtime_ms=done.get("downtime"),
        data_transferred_bytes=done.get("data_processed") or (
            last.data_processed_bytes if last else None),
        iterations=done.get("memory_iteration") or (last.iteration if last else None),
        throttle_max_pct=max(throttle, int(done.get("auto_converge_throttle", 0))),
        postcopy_used=postcopy, max_downtime_ms_used=downtime_ms, checks=checks,
        encrypted=job.options.tls)


def _steer(job: MigrationJob, settings: ConvergenceSettings, history: list[JobSample],
           vm: _Vm, dest: str, started: float,
           on_progress: Callable[[MigrationProgress], None] | None) -> \
        tuple[str | None, int, bool]:
    """Poll the job until it ends, applying the policy; (abort reason, last max
    downtime, whether post-copy started)."""
    downtime_ms = settings.first_downtime_ms
    postcopy = False
    abort_reason: str | None = None
    while not job.wait(settings.poll_interval_s):
        # Our own clock too: the policy's timeout reads libvirt's job stats, and a job
        # that reports none (sample() None) would otherwise run without a limit.
        elapsed_s = SYSTEM.monotonic() - started
        if abort_reason is None and settings.timeout_s is not None and \
                elapsed_s >= settings.timeout_s:
            abort_reason = (f"timed out after {elapsed_s:.0f} s (timeout "
                            f"{settings.timeout_s:g} s)"
                            + ("" if history else "; libvirt reported no progress"))
            job.abort()
        sample = job.sample()
        if sample is None:
            continue
        history.append(sample)
        if abort_reason is not None:
            continue
        d = convergence.decide(settings, history, downtime_ms=downtime_ms,
                               postcopy_started=postcopy)
        if d.abort_reason:
            abort_reason = d.abort_reason
            job.abort()
        elif d.downtime_ms is not None:
            job.set_max_downtime(d.downtime_ms)
            downtime_ms = d.downtime_ms
        elif d.postcopy:
            postcopy = job.start_postcopy()
        if on_progress is not None:
            on_progress(MigrationProgress(
                vm=vm.name, source=vm.host, destination=dest,
                elapsed_s=SYSTEM.monotonic() - started, iteration=sample.iteration,
                data_total_bytes=sample.data_total_bytes,
                data_remaining_bytes=sample.data_remaining_bytes,
                dirty_rate_bytes_s=sample.dirty_rate_bytes_s,
                transfer_rate_bytes_s=sample.transfer_rate_bytes_s,
                expected_downtime_ms=sample.expected_downtime_ms,
                max_downtime_ms=downtime_ms, throttle_pct=sample.throttle_pct,
                stalled=d.stalled, postcopy=postcopy, raw=sample.raw))
    return abort_reason, downtime_ms, postcopy
