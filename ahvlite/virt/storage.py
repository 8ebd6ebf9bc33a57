"""Storage pools and volumes."""

from __future__ import annotations

from pathlib import Path

import libvirt
from lxml import etree

from ahvlite.virt.conn import libvirt_errors


def dir_pool_xml(name: str, path: Path) -> str:
    pool = etree.Element("pool", type="dir")
    etree.SubElement(pool, "name").text = name
    target = etree.SubElement(pool, "target")
    etree.SubElement(target, "path").text = str(path)
    return etree.tostring(pool, encoding="unicode")


def ensure_dir_pool(conn: libvirt.virConnect, name: str, path: Path) -> libvirt.virStoragePool:
    """Define, autostart and start a directory pool; a no-op when it already runs."""
    with libvirt_errors(f"storage pool {name}"):
        try:
            pool = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            pool = conn.storagePoolDefineXML(dir_pool_xml(name, path), 0)
        if not pool.isActive():
            pool.create(0)
        pool.setAutostart(1)
        pool.refresh(0)
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
    with libvirt_errors(f"volume {name}"):
        pool.refresh(0)
        try:
            pool.storageVolLookupByName(name).delete(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
        created = pool.createXML(etree.tostring(vol, encoding="unicode"), 0)
        return Path(created.path())
