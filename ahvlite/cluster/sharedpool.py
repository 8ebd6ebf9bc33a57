"""What the playbook is told about the cluster's shared storage (pure).

``host provision`` refuses a cluster without shared storage: VM disks, NVRAM and
virtlockd's lockspace must be on storage every host sees, or migration fails and HA
could open one disk on two hosts. The lab's cluster file describes its shared
directory as a ``dir`` pool; real clusters name an NFS export (``netfs``).
"""

from __future__ import annotations

from typing import Any

from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.storage import config


def provision_vars(cluster: ClusterSpec) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(group vars, per-host vars) for the shared_pool, virtlockd and iscsi_path roles."""
    if not cluster.shared_pool or cluster.pool is None:
        missing = "shared_pool" if not cluster.shared_pool else "pool"
        raise InvalidSpec(
            missing, None,
            "shared storage every host mounts: shared_pool (the libvirt pool's name) and "
            "pool (kind netfs with server and export, or dir for a directory shared by "
            "other means); VM disks, NVRAM and virtlockd's lockspace live there",
            hint="e.g. shared_pool: ahvlite-shared / pool: {kind: netfs, server: "
                 "192.0.2.10, export: /srv/ahvlite} (docs/storage.md)")
    pool = cluster.pool
    group = {
        "ahvlite_pool_name": cluster.shared_pool,
        "ahvlite_pool_kind": pool.kind,
        "ahvlite_pool_path": pool.path,
        "ahvlite_pool_server": pool.server or "",
        "ahvlite_pool_export": pool.export or "",
        "ahvlite_lockspace_dir": pool.lockspace_dir,
        "ahvlite_storage": cluster.storage,
    }
    per_host: dict[str, dict[str, Any]] = {}
    if cluster.storage == "iscsi":
        for h in cluster.hosts:
            cfg = config.for_host(cluster, h.name, pool.path)
            per_host[h.name] = {"ahvlite_redirector_config": cfg.model_dump(mode="json")}
    return group, per_host
