"""Which host paths a VM spec may name: only what the cluster owns.

A spec can come from a task record or a stored template, not only from the operator,
and QEMU runs as root: a kernel of ``/etc/shadow`` hands the file to the guest, a
serial log of ``/etc/cron.d/x`` writes guest output there. So every host path in a spec
must resolve (symlinks followed, so a link in an allowed directory cannot point out of
it) inside the shared pool's directory or ahvlite's image directory; serial logs go to
libvirt's QEMU log directory only.

The paths are resolved on this machine: the shared pool is the same directory on every
host (NFS, or the lab's shared directory), and the other roots are fixed paths.
"""

from __future__ import annotations

import os
from pathlib import Path

from ahvlite.errors import InvalidSpec
from ahvlite.spec.vm import VmSpec

IMAGES_DIR = "/var/lib/ahvlite/images"
SERIAL_LOG_DIR = "/var/log/libvirt/qemu"


def _inside(path: str, root: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real != base and os.path.commonpath([real, base]) == base


def confine(field: str, path: str, roots: tuple[str, ...], *,
            hint: str | None = None) -> str:
    """``path`` if it is absolute and resolves under one of ``roots``, else InvalidSpec
    naming ``field`` and the roots."""
    if not path.startswith("/") or "\0" in path or not any(_inside(path, r) for r in roots):
        raise InvalidSpec(field, path, "a file under " + " or ".join(f"{r}/" for r in roots),
                          hint=hint)
    return path


def host_paths(spec: VmSpec) -> list[tuple[str, str]]:
    """(field, path) for every host path ``spec`` names, besides its serial log."""
    out = [(f"disks[{i}].path", d.path) for i, d in enumerate(spec.disks) if d.path]
    out += [(f"boot.{k}", v) for k, v in (("kernel", spec.boot.kernel),
                                          ("initrd", spec.boot.initrd)) if v]
    return out


def check_spec_paths(spec: VmSpec, pool_dir: str | Path) -> None:
    """Refuse ``spec`` when it names a host path outside what the cluster owns:
    the shared pool's directory (``pool_dir``, as libvirt reports it) and
    :data:`IMAGES_DIR`; the serial log only in :data:`SERIAL_LOG_DIR`."""
    roots = (str(pool_dir), IMAGES_DIR) if str(pool_dir).startswith("/") else (IMAGES_DIR,)
    for field, path in host_paths(spec):
        confine(field, path, roots, hint="put the file in the cluster's shared pool or in "
                                         f"{IMAGES_DIR}/")
    if spec.serial_log:
        confine("serial_log", spec.serial_log, (SERIAL_LOG_DIR,),
                hint=f"serial logs are written to {SERIAL_LOG_DIR}/NAME.log only")
