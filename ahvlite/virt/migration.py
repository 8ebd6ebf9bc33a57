"""Live migration through libvirt, peer to peer (the source libvirtd drives it).

A migration is a libvirt job: :class:`MigrationJob` runs ``migrateToURI3`` on a worker
thread and lets the caller poll ``jobStats`` and steer the running job. What can be
changed while the job runs, and what cannot (libvirt 9 / QEMU 7):

* max downtime (``migrateSetMaxDowntime``) and bandwidth (``migrateSetMaxSpeed``):
  any time; QEMU applies them at its next iteration.
* post-copy: only if ``VIR_MIGRATE_POSTCOPY`` was given at start (it turns on QEMU's
  ``postcopy-ram`` capability on both sides); the switch itself
  (``migrateStartPostCopy``) may then come at any time.
* auto-converge (CPU throttling): a QEMU migration *capability*, fixed when the job
  starts, and libvirt has no call to change the throttle parameters of a running job.
  So it is requested at start (``VIR_MIGRATE_AUTO_CONVERGE`` with initial/increment
  percentages) and QEMU engages it by itself only when an iteration dirties more than
  half of what it sent, i.e. exactly when iterations stop making progress. The throttle
  QEMU applied is read back from the job stats (``auto_converge_throttle``).
* abort (``abortJob``): any time before the switch to post-copy; afterwards the guest
  runs on the destination and cannot go back.

The stream carries the guest's memory, so it is always encrypted (``VIR_MIGRATE_TLS``:
QEMU's own TLS, with the certificates libvirt's qemu.conf points at, /etc/pki/qemu by
default: ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem;
both ends verify each other).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import libvirt

from ahvlite.clock import SYSTEM
from ahvlite.errors import AhvliteError, Conflict, OperationFailed
from ahvlite.virt.conn import libvirt_errors, translate
from ahvlite.virt.guest import Guest

# The VIR_MIGRATE_* flags flags_for may set, by name without the prefix.
FLAG_NAMES = ("LIVE", "PEER2PEER", "PERSIST_DEST", "UNDEFINE_SOURCE", "TLS",
              "AUTO_CONVERGE", "POSTCOPY", "UNSAFE")


@dataclass(frozen=True)
class MigrationOptions:
    """How a migration starts; ``max_downtime_ms`` is the first downtime set."""

    max_downtime_ms: int = 300
    bandwidth_mib_s: int | None = None
    auto_converge: bool = True
    auto_converge_initial_pct: int = 20
    auto_converge_increment_pct: int = 10
    postcopy: bool = False
    tls: bool = True  # guest memory never crosses the network in clear
    # Lab only: see flags_for.
    same_kernel_storage: bool = False


@dataclass(frozen=True)
class JobSample:
    """One ``jobStats`` reading, with units; fields absent from the dict are None."""

    elapsed_ms: int
    iteration: int
    data_total_bytes: int | None = None
    data_processed_bytes: int | None = None
    data_remaining_bytes: int | None = None
    dirty_rate_pages_s: int | None = None
    page_size_bytes: int = 4096
    transfer_rate_bytes_s: int | None = None
    expected_downtime_ms: int | None = None
    throttle_pct: int = 0
    postcopy_requests: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> JobSample:
        return cls(
            elapsed_ms=int(stats.get("time_elapsed", 0)),
            iteration=int(stats.get("memory_iteration", 0)),
            data_total_bytes=stats.get("data_total"),
            data_processed_bytes=stats.get("data_processed"),
            data_remaining_bytes=stats.get("data_remaining"),
            dirty_rate_pages_s=stats.get("memory_dirty_rate"),
            page_size_bytes=int(stats.get("memory_page_size", 4096)),
            transfer_rate_bytes_s=stats.get("memory_bps"),
            expected_downtime_ms=stats.get("downtime"),
            throttle_pct=int(stats.get("auto_converge_throttle", 0)),
            postcopy_requests=int(stats.get("memory_postcopy_requests", 0)),
            raw=dict(stats),
        )

    @property
    def dirty_rate_bytes_s(self) -> int | None:
        if self.dirty_rate_pages_s is None:
            return None
        return self.dirty_rate_pages_s * self.page_size_bytes


def flags_for(options: MigrationOptions) -> int:
    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
             | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    if options.tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if options.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if options.postcopy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if options.same_kernel_storage:
        # libvirt only trusts network filesystems (NFS, GFS2, Ceph ...) as shared. The
        # lab's shared directory is one filesystem under one kernel, coherent for every
        # host by construction, which libvirt cannot tell; only the lab sets this.
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    return flags


def flag_names(options: MigrationOptions) -> set[str]:
    """The flags :func:`flags_for` sets, by name (``"POSTCOPY"``): what callers outside
    this package may look at, without importing libvirt."""
    flags = flags_for(options)
    return {n for n in FLAG_NAMES if flags & getattr(libvirt, f"VIR_MIGRATE_{n}")}


def params_for(options: MigrationOptions, migrate_uri: str) -> dict[str, Any]:
    params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_URI: migrate_uri}
    if options.bandwidth_mib_s:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = options.bandwidth_mib_s
    if options.auto_converge:
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = \
            options.auto_converge_initial_pct
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] = \
            options.auto_converge_increment_pct
    return params


def peer_uri(uri: str) -> str:
    """The URI the *source libvirtd* uses to reach the destination: the client's
    ``pkipath`` is a path on this machine, the source daemon has its own certificates."""
    parts = urlsplit(uri)
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("pkipath="))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def has_active_job(guest: Guest) -> bool:
    """Whether libvirt runs a job on ``guest`` now (a migration started by anyone)."""
    dom = guest.dom
    try:
        kind = int(dom.jobInfo()[0])
    except libvirt.libvirtError as exc:
        # The incoming end of a migration: only its source reports the job ("migration
        # statistics are available only on the source host"). A job runs all the same.
        if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_UNSUPPORTED:
            return True
        raise translate(exc, f"job info of {dom.name()}") from None
    return kind not in (libvirt.VIR_DOMAIN_JOB_NONE, libvirt.VIR_DOMAIN_JOB_COMPLETED,
                        libvirt.VIR_DOMAIN_JOB_FAILED, libvirt.VIR_DOMAIN_JOB_CANCELLED)


class MigrationJob:
    """One running migration of ``guest`` (a domain on the source connection)."""

    def __init__(self, guest: Guest, *, dest_uri: str, migrate_uri: str,
                 options: MigrationOptions) -> None:
        self.dom = guest.dom
        self.name = guest.name
        self.dest_uri = dest_uri
        self.migrate_uri = migrate_uri
        self.options = options
        self._thread: threading.Thread | None = None
        self._error: AhvliteError | None = None
        self.started_at = 0.0
        self.finished_at: float | None = None
        self.postcopy_started = False  # from then on the guest runs at the destination

    def start(self) -> None:
        with libvirt_errors(f"max downtime of {self.name}"):
            self.dom.migrateSetMaxDowntime(self.options.max_downtime_ms, 0)
        self.started_at = SYSTEM.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"migrate-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.dom.migrateToURI3(self.dest_uri, params_for(self.options, self.migrate_uri),
                                   flags_for(self.options))
        except libvirt.libvirtError as exc:
            self._error = translate(exc, f"migrate {self.name} to {self.dest_uri}")
            if self.options.tls and "pki/qemu" in self._error.message:
                self._error.hint = ("the migration stream is encrypted with the certificates "
                                    "in /etc/pki/qemu on both hosts: provision them again "
                                    "(`ahvlite host provision`)")
        except Exception as exc:  # handed to the caller's thread, never lost
            self._error = OperationFailed(f"migrate {self.name}: {exc}")
        finally:
            self.finished_at = SYSTEM.monotonic()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the job to end; True when it has."""
        assert self._thread is not None, "start() first"
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    @property
    def error(self) -> AhvliteError | None:
        return self._error

    def sample(self) -> JobSample | None:
        """The running job's stats, or None when there is none (not yet / already over)."""
        try:
            stats = self.dom.jobStats(0)
        except libvirt.libvirtError:
            return None  # the domain is gone from the source: the job is over
        if int(stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE)) != \
                libvirt.VIR_DOMAIN_JOB_UNBOUNDED:
            return None
        return JobSample.from_stats(stats)

    def _control(self, what: str, call: Callable[[], object]) -> bool:
        """Steer the running job; False when it ended meanwhile (the source domain is
        undefined the moment a migration completes, so a late call finds no domain)."""
        try:
            call()
            return True
        except libvirt.libvirtError as exc:
            if self.wait(2.0):
                return False
            raise translate(exc, f"{what} of {self.name}") from None

    def set_max_downtime(self, downtime_ms: int) -> bool:
        return self._control("max downtime",
                             lambda: self.dom.migrateSetMaxDowntime(downtime_ms, 0))

    def start_postcopy(self) -> bool:
        if not self.options.postcopy:
            raise Conflict(f"{self.name}: post-copy needs the migration started with it")
        self.postcopy_started = self._control("post-copy switch",
                                              lambda: self.dom.migrateStartPostCopy(0))
        return self.postcopy_started

    def abort(self) -> bool:
        return self._control("abort migration", lambda: self.dom.abortJob())


def completed_stats(conn: libvirt.virConnect, name: str) -> dict[str, Any]:
    """The completed migration's stats as the *destination* keeps them (the source
    domain is undefined on success, its stats go with it); {} if unavailable."""
    try:
        return dict(conn.lookupByName(name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
    except libvirt.libvirtError:
        return {}

