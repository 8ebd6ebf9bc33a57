"""Live migration through libvirt, peer to peer (the source libvirtd drives it)."""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from ahvlite.virt.conn import libvirt_errors


@dataclass(frozen=True)
class MigrationResult:
    total_ms: int | None
    downtime_ms: int | None
    data_total_bytes: int | None
    iterations: int | None


def live_migrate(dom: libvirt.virDomain, *, dest_uri: str, migrate_uri: str,
                 max_downtime_ms: int = 300, tls: bool = False,
                 same_kernel_storage: bool = False) -> MigrationResult:
    """Migrate ``dom`` live to ``dest_uri``: persistent there, undefined here on success.

    ``migrate_uri`` (``tcp://ADDR``) names the destination by management address, so
    the stream never depends on the destination's hostname resolving.
    ``same_kernel_storage`` is for the lab only (see below).
    """
    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
             | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    if tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if same_kernel_storage:
        # libvirt only trusts network filesystems (NFS, GFS2, Ceph ...) as shared. The
        # lab's shared directory is one filesystem under one kernel, coherent for every
        # host by construction, which libvirt cannot tell; only the lab sets this.
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    params = {libvirt.VIR_MIGRATE_PARAM_URI: migrate_uri}
    name = dom.name()
    with libvirt_errors(f"migrate {name} to {dest_uri}"):
        dom.migrateSetMaxDowntime(max_downtime_ms, 0)
        dom.migrateToURI3(dest_uri, params, flags)
    return _completed_stats(dom)


def _completed_stats(dom: libvirt.virDomain) -> MigrationResult:
    try:
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        # The source domain is undefined on success; its completed-job stats may be
        # gone with it. The migration itself succeeded.
        stats = {}
    return MigrationResult(
        total_ms=stats.get("time_elapsed"),
        downtime_ms=stats.get("downtime"),
        data_total_bytes=stats.get("data_total"),
        iterations=stats.get("memory_iteration"),
    )
