"""``storage show``: every host's iSCSI targets and their health as its redirector sees
them, with the VM disk each one serves (the LUNs' side and the VMs' side together)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ahvlite.clock import SYSTEM
from ahvlite.cluster import luns, vms
from ahvlite.cluster.inventory import parallel
from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.storage import view


def storage_view(cluster: ClusterSpec, *, with_vms: bool = True) -> dict[str, Any]:
    """Every host's targets and their health as its redirector sees them, and where
    each VM disk's session is now (``storage show``)."""
    if not luns.uses_iscsi(cluster):
        raise InvalidSpec("storage", cluster.storage, "iscsi (this cluster's VMs open "
                          "their disks as files: there are no targets to show)")
    # The VMs (libvirt) and the redirectors (SSH) are read at once: with a host gone,
    # each side waits out its own connect timeout, and in turn they outlast a client.
    with ThreadPoolExecutor(1, thread_name_prefix="storage-vms") as side:
        listing = side.submit(vms.list_vms, cluster) if with_vms else None
        statuses = dict(parallel(lambda h: (h.name, luns.read_status(h)),
                                 list(cluster.hosts)))
        found = listing.result()[0] if listing is not None else []
    vm_names: dict[str, str] = {}
    disks: dict[str, tuple[str, str]] = {}
    if with_vms:
        for v in found:
            vm_names[v.uuid] = v.name
            for d in v.disks:
                if d.get("volume"):
                    disks[d["volume"]] = (v.name, d["name"])
    merged = view.merge(statuses, now_s=SYSTEM.time(), vms=vm_names, disks=disks)
    merged["cluster"] = cluster.name
    return merged
