"""iSCSI LUNs across the cluster: a VM disk's target on every host's tgtd, and the
storage view of every host's redirector. Reached over SSH (the cluster file's).

A host that cannot be reached when a disk is made gets it later: its redirector
exports every iSCSI volume of the shared pool it finds (storage/redirector.py), and
its target only counts as healthy once it has.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ahvlite.cluster.inventory import parallel, ssh_target
from ahvlite.errors import AhvliteError, HostUnreachable, InvalidSpec
from ahvlite.remote import ssh
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.spec.storage import split_portal
from ahvlite.storage import names
from ahvlite.storage.config import STATUS_FILE, target_portals
from ahvlite.storage.names import volume_target
from ahvlite.storage.tgt import Tgt
from ahvlite.virt.designer import DiskPlacement, IscsiDiskPlacement

Report = Callable[[str], None]


def uses_iscsi(cluster: ClusterSpec) -> bool:
    return cluster.storage == "iscsi"


def _target_on(host: HostSpec) -> tuple[ssh.SshTarget, Tgt]:
    target = ssh_target(host)
    if target is None:
        raise InvalidSpec(f"hosts.{host.name}.ssh", None,
                          "an ssh entry: storage: iscsi reaches each host's target "
                          "(tgtadm) over SSH")

    def run(argv: list[str]) -> str:
        return ssh.run(target, argv, timeout_s=30).stdout

    return target, Tgt(run)


def _initiators(cluster: ClusterSpec) -> list[str]:
    return sorted({split_portal(p)[0] for p in target_portals(cluster).values()})


def export_lun(cluster: ClusterSpec, volume: str, path: str, *,
               must: tuple[str, ...] = (), report: Report = lambda _m: None
               ) -> dict[str, str]:
    """Target of ``volume`` (backed by ``path``) on every host's tgtd.

    Hosts in ``must`` (where the VM starts) must succeed; an unreachable other host
    is left to its redirector. Returns host -> "exported" / "present" / why not."""
    iqn = volume_target(volume)
    allowed = _initiators(cluster)

    def one(h: HostSpec) -> tuple[str, str, AhvliteError | None]:
        try:
            _, t = _target_on(h)
            return h.name, "exported" if t.export(iqn, path, allowed) else "present", None
        except AhvliteError as exc:
            return h.name, exc.message, exc

    out: dict[str, str] = {}
    for host, result, exc in parallel(one, list(cluster.hosts)):
        out[host] = result
        if exc is not None and (host in must or not isinstance(exc, HostUnreachable)):
            raise exc
    report(f"LUN {iqn} on {', '.join(h for h, r in out.items() if r in ('exported', 'present'))}")
    return out


def unexport_lun(cluster: ClusterSpec, volume: str) -> dict[str, str]:
    """Remove ``volume``'s target from every reachable host (before the volume goes).
    A target that still has sessions stays (a VM uses it): say so, remove nothing
    else there."""
    iqn = volume_target(volume)

    def one(h: HostSpec) -> tuple[str, str]:
        try:
            _, t = _target_on(h)
            return h.name, "removed" if t.unexport(iqn) else "absent"
        except AhvliteError as exc:
            return h.name, exc.message

    return dict(parallel(one, list(cluster.hosts)))


def read_status(host: HostSpec) -> dict[str, Any] | str:
    """The host's redirector status, or why it cannot be had."""
    target = ssh_target(host)
    if target is None:
        return "no ssh entry in the cluster file"
    try:
        raw = json.loads(ssh.read_file(target, STATUS_FILE))
    except AhvliteError as exc:
        return exc.message
    except (ValueError, OSError) as exc:
        return f"unreadable status: {exc}"
    return raw if isinstance(raw, dict) else "status is not a JSON object"


# -- the VM layer's disks --------------------------------------------------------------

def lun_volume(vm: str, disk: str, tag: str) -> str:
    return names.lun_volume(vm, disk, tag)


def placement(cluster: ClusterSpec, volume: str, path: str, fmt: str, *,
              cdrom: bool = False) -> DiskPlacement:
    """Where the designer puts a shared-pool volume: an iSCSI LUN through the host's
    redirector (storage: iscsi, an iSCSI volume, not a CD-ROM), else the file."""
    if uses_iscsi(cluster) and not cdrom and names.is_lun_volume(volume):
        return IscsiDiskPlacement(path, volume, "raw", iqn=volume_target(volume),
                                  lun=names.DISK_LUN, portal_host=names.REDIRECTOR_ADDRESS,
                                  portal_port=names.REDIRECTOR_PORT)
    return DiskPlacement(path, volume, format=fmt)


def forget_lun(cluster: ClusterSpec, volume: str) -> None:
    """Before an iSCSI volume is deleted: its target goes from every host."""
    if uses_iscsi(cluster) and names.is_lun_volume(volume):
        unexport_lun(cluster, volume)
