"""The libvirt calls a host's CVM needs beyond the VM layer (its autostart is the
Guest's): the host's online CPUs (each CVM vCPU is pinned to one of them) and a
host-local pool."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

import libvirt

from ahvlite.virt import storage
from ahvlite.virt.conn import libvirt_errors, or_none


def online_cpus(conn: libvirt.virConnect) -> tuple[int, ...]:
    """Host CPU numbers that are online (offline ones cannot take a pinned vCPU)."""
    with libvirt_errors("host CPU map"):
        _count, online, _ = conn.getCPUMap(0)
    return tuple(i for i, up in enumerate(online) if up)


def find_local_pool(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool | None:
    """The pool ``name``, started and rescanned; None when it is not defined (nothing
    is created: `cvm remove` must not leave a pool behind that was never there)."""
    with libvirt_errors(f"storage pool {name}"):
        pool = or_none(lambda: conn.storagePoolLookupByName(name),
                       missing=libvirt.VIR_ERR_NO_STORAGE_POOL, context=f"storage pool {name}")
        if pool is None:
            return None
        if not pool.isActive():
            pool.create(0)
    storage.refresh(pool)
    return pool


def ensure_local_pool(conn: libvirt.virConnect, name: str,
                      path: Path) -> tuple[libvirt.virStoragePool, bool]:
    """A host-local directory pool, its directory made by libvirt when missing; with
    whether this call defined it (a failed deployment removes only a pool it made)."""
    created = False
    with libvirt_errors(f"storage pool {name}"):
        pool = or_none(lambda: conn.storagePoolLookupByName(name),
                       missing=libvirt.VIR_ERR_NO_STORAGE_POOL, context=f"storage pool {name}")
        if pool is None:
            pool = conn.storagePoolDefineXML(storage.dir_pool_xml(name, path), 0)
            created = True
        try:
            if not pool.isActive():
                pool.build(0)  # dir pools: mkdir -p; existing files are kept
                pool.create(0)
            pool.setAutostart(1)
        except libvirt.libvirtError:
            if created:  # not half-made: a definition that cannot start goes again
                with suppress(libvirt.libvirtError):
                    pool.undefine()
            raise
    storage.refresh(pool)
    return pool, created


def remove_pool(pool: libvirt.virStoragePool) -> None:
    """Stop and undefine ``pool``; its directory goes too when it is empty (libvirt's
    delete of a dir pool is an rmdir, so files someone put there are kept)."""
    with libvirt_errors(f"remove storage pool {pool.name()}"):
        if pool.isActive():
            pool.destroy()
        with suppress(libvirt.libvirtError):  # not empty, or the driver cannot
            pool.delete(0)
        pool.undefine()
