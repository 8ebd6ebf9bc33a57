"""Storage pools and volumes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import libvirt
from lxml import etree

from ahvlite.errors import Conflict, NotFound, OperationFailed
from ahvlite.virt.conn import libvirt_errors, or_none


def dir_pool_xml(name: str, path: Path) -> str:
    pool = etree.Element("pool", type="dir")
    etree.SubElement(pool, "name").text = name
    target = etree.SubElement(pool, "target")
    etree.SubElement(target, "path").text = str(path)
    return etree.tostring(pool, encoding="unicode")


def ensure_dir_pool(conn: libvirt.virConnect, name: str, path: Path) -> libvirt.virStoragePool:
    """Define, autostart and start a directory pool; a no-op when it already runs."""
    with libvirt_errors(f"storage pool {name}"):
        pool = or_none(lambda: conn.storagePoolLookupByName(name),
                       missing=libvirt.VIR_ERR_NO_STORAGE_POOL, context=f"storage pool {name}")
        if pool is None:
            pool = conn.storagePoolDefineXML(dir_pool_xml(name, path), 0)
        if not pool.isActive():
            pool.create(0)
        pool.setAutostart(1)
    refresh(pool)
    return pool


def pool_path(pool: libvirt.virStoragePool) -> Path:
    with libvirt_errors("read pool XML"):
        root = etree.fromstring(pool.XMLDesc(0))
    return Path(root.findtext("target/path") or "")


def create_overlay(pool: libvirt.virStoragePool, name: str, backing: Path,
                   *, capacity_mib: int = 64) -> Path:
    """A qcow2 volume in ``pool`` backed by ``backing``; replaces a stale one."""
    vol = etree.Element("volume")
    etree.SubElement(vol, "name").text = name
    etree.SubElement(vol, "capacity", unit="MiB").text = str(capacity_mib)
    target = etree.SubElement(vol, "target")
    etree.SubElement(target, "format", type="qcow2")
    store = etree.SubElement(vol, "backingStore")
    etree.SubElement(store, "path").text = str(backing)
    etree.SubElement(store, "format", type="qcow2")
    refresh(pool)  # waits out volume builds of concurrent callers
    stale = find_volume(pool, name)
    with libvirt_errors(f"volume {name}"):
        if stale is not None:
            stale.delete(0)
        created = pool.createXML(etree.tostring(vol, encoding="unicode"), 0)
        return Path(created.path())


# -- the VM layer's volumes ----------------------------------------------------------

@dataclass(frozen=True)
class VolumeInfo:
    name: str
    path: str
    format: str | None
    capacity_mib: int
    allocation_mib: int
    backing: str | None


def lookup_pool(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool:
    with libvirt_errors(f"storage pool {name}"):
        pool = conn.storagePoolLookupByName(name)
        if not pool.isActive():
            pool.create(0)
        return pool


def refresh(pool: libvirt.virStoragePool, *, timeout_s: float = 60) -> None:
    """Rescan the pool: the shared directory changes under every host but one.

    libvirt refuses while a volume is being built in the pool (another create running
    at the same time, from this process or another); that is waited out.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pool.refresh(0)
            return
        except libvirt.libvirtError as exc:
            busy = "asynchronous jobs" in (exc.get_error_message() or "")
            if not busy or time.monotonic() > deadline:
                with libvirt_errors("refresh pool"):
                    raise
        time.sleep(0.05)


def find_volume(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    return or_none(lambda: pool.storageVolLookupByName(name),
                   missing=libvirt.VIR_ERR_NO_STORAGE_VOL, context=f"volume {name}")


def volume_info(vol: libvirt.virStorageVol) -> VolumeInfo:
    with libvirt_errors(f"volume {vol.name()}"):
        root = etree.fromstring(vol.XMLDesc(0).encode())
        _, capacity, allocation = vol.info()
        fmt = root.find("target/format")
        return VolumeInfo(name=vol.name(), path=vol.path(),
                          format=fmt.get("type") if fmt is not None else None,
                          capacity_mib=capacity // (1024 * 1024),
                          allocation_mib=allocation // (1024 * 1024),
                          backing=root.findtext("backingStore/path"))


def list_volumes(pool: libvirt.virStoragePool) -> list[VolumeInfo]:
    with libvirt_errors("list volumes"):
        vols = pool.listAllVolumes(0)
    return sorted((volume_info(v) for v in vols), key=lambda v: v.name)


def _volume_xml(name: str, capacity_bytes: int, fmt: str = "qcow2",
                backing: VolumeInfo | None = None) -> str:
    vol = etree.Element("volume")
    etree.SubElement(vol, "name").text = name
    etree.SubElement(vol, "capacity", unit="bytes").text = str(capacity_bytes)
    target = etree.SubElement(vol, "target")
    etree.SubElement(target, "format", type=fmt)
    if backing is not None:
        store = etree.SubElement(vol, "backingStore")
        etree.SubElement(store, "path").text = backing.path
        etree.SubElement(store, "format", type=backing.format or "qcow2")
    return etree.tostring(vol, encoding="unicode")


def _refuse_existing(pool: libvirt.virStoragePool, name: str) -> None:
    refresh(pool)
    if find_volume(pool, name) is not None:
        raise Conflict(f"volume {name} already exists in the pool",
                       hint="pick another name, or delete the volume first")


def create_volume(pool: libvirt.virStoragePool, name: str, capacity_mib: int, *,
                  fmt: str = "qcow2") -> Path:
    """An empty volume (qcow2, or raw for an iSCSI LUN); refuses a name in use."""
    _refuse_existing(pool, name)
    with libvirt_errors(f"create volume {name}"):
        vol = pool.createXML(_volume_xml(name, capacity_mib * 1024 * 1024, fmt=fmt), 0)
        return Path(vol.path())


def clone_volume(pool: libvirt.virStoragePool, name: str, source: str, *,
                 full: bool = False, capacity_mib: int | None = None,
                 fmt: str = "qcow2") -> Path:
    """A new volume from volume ``source``: a qcow2 backing-file overlay (instant), or
    with ``full`` an independent copy (in ``fmt``: raw for an iSCSI LUN, which has no
    backing file)."""
    _refuse_existing(pool, name)
    src = find_volume(pool, source)
    if src is None:
        raise NotFound(f"volume {source} is not in the pool")
    info = volume_info(src)
    capacity = max(info.capacity_mib, capacity_mib or 0) * 1024 * 1024
    with libvirt_errors(f"clone {source} to {name}"):
        if full or fmt != "qcow2":
            vol = pool.createXMLFrom(_volume_xml(name, capacity, fmt=fmt), src, 0)
        else:
            vol = pool.createXML(_volume_xml(name, capacity, backing=info), 0)
        return Path(vol.path())


def delete_volume(pool: libvirt.virStoragePool, name: str) -> bool:
    """Delete volume ``name``; False when it did not exist."""
    refresh(pool)
    vol = find_volume(pool, name)
    if vol is None:
        return False
    with libvirt_errors(f"delete volume {name}"):
        vol.delete(0)
    return True


def detect_format(path: Path) -> str:
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


def upload_volume(conn: libvirt.virConnect, pool: libvirt.virStoragePool, name: str,
                  source: Path, *, report: Callable[[int, int], None] | None = None,
                  fmt: str | None = None) -> Path:
    """Copy local file ``source`` into a new volume over libvirt's stream API (works to
    remote hosts); the volume keeps the file's format (``fmt``, as inspected, else
    qcow2 or raw by its magic)."""
    size = source.stat().st_size

    def chunks() -> Iterator[bytes]:
        with open(source, "rb") as f:
            while chunk := f.read(1024 * 1024):
                yield chunk

    return _upload(conn, pool, name, size, chunks(), fmt or detect_format(source), report)


def upload_bytes(conn: libvirt.virConnect, pool: libvirt.virStoragePool, name: str,
                 data: bytes) -> Path:
    """A new raw volume holding ``data`` (a seed ISO, say)."""
    return _upload(conn, pool, name, len(data), iter([data]), "raw", None)


def _upload(conn: libvirt.virConnect, pool: libvirt.virStoragePool, name: str, size: int,
            chunks: Iterator[bytes], fmt: str,
            report: Callable[[int, int], None] | None) -> Path:
    _refuse_existing(pool, name)
    with libvirt_errors(f"upload to {name}"):
        vol = pool.createXML(_volume_xml(name, size, fmt="raw"), 0)
    try:
        stream = conn.newStream(0)
        with libvirt_errors(f"upload to {name}"):
            vol.upload(stream, 0, size, 0)
            sent = 0
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = stream.send(view.tobytes())
                    view = view[n:]
                    sent += n
                if report:
                    report(sent, size)
            stream.finish()
    except BaseException:
        with suppress(libvirt.libvirtError):
            vol.delete(0)
        raise
    refresh(pool)  # the dir pool probes the format (qcow2) from the file itself
    path = Path(vol.path())
    if fmt != "raw" and (volume_info(pool.storageVolLookupByName(name)).format or "") != fmt:
        raise OperationFailed(f"{name}: uploaded as {fmt} but the pool sees another format")
    return path
