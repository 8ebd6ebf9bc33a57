"""A VM's devices while it exists: hot-plug and cold-plug of disks and NICs (the
metadata that names them kept in step). libvirt only through ``ahvlite.virt``."""

from __future__ import annotations

from contextlib import suppress

from ahvlite.cluster import luns
from ahvlite.cluster.guard import Guard, no_guard, still
from ahvlite.cluster.vms import (
    VmInfo,
    connect,
    image_source,
    image_volume_name,
    info_of,
    networks_of,
    new_tag,
    vm_volume,
)
from ahvlite.errors import AhvliteError, Conflict, InvalidSpec, NotFound
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.vm import DiskSpec, NicSpec, VmSpec
from ahvlite.virt import designer, storage
from ahvlite.virt.xml.domain import Domain, VmMeta


def free_disk_name(cluster: ClusterSpec, name: str, wanted: str | None) -> str:
    """The name a new disk of VM ``name`` gets: ``wanted`` (Conflict when taken), else
    the first free ``diskN``."""
    with connect(cluster) as hosts:
        _, dom = hosts.find(name)
        return _disk_name(dom.config(inactive=True), name, wanted)


def _disk_name(d: Domain, vm: str, wanted: str | None) -> str:
    meta = d.meta or VmMeta()
    taken = set(meta.disk_names.values()) | set(meta.volumes)
    taken |= {x.serial or "" for x in d.devices.disks} if d.devices else set()
    if wanted is not None:
        if wanted in taken:
            raise Conflict(f"{vm} already has a disk named {wanted}")
        return wanted
    n = 0
    while f"disk{n}" in taken:
        n += 1
    return f"disk{n}"


def add_disk(cluster: ClusterSpec, name: str, disk: DiskSpec, *, tag: str | None = None,
             guard: Guard = no_guard) -> VmInfo:
    """Add a disk (hot-plugged when the VM runs); the volume goes when the attach fails.
    Its volume is named with ``tag`` (random when None); ``guard`` runs before each
    change and raises to stop (then nothing is undone: see :func:`create_on_host`)."""
    with connect(cluster) as hosts:
        host, dom = hosts.find(name)
        d = dom.config(inactive=True)
        meta = d.meta or d.ensure_meta()
        disk_name = _disk_name(d, name, disk.name)
        used = {x.target_dev or "" for x in d.devices.disks} if d.devices else set()
        dev = designer.next_target_dev(used, disk.bus)
        pool = hosts.pool(host)
        iscsi = luns.uses_iscsi(cluster)
        fmt = "raw" if iscsi else "qcow2"
        tag = tag or new_tag()
        vol = luns.lun_volume(name, disk_name, tag) if iscsi else vm_volume(name, disk_name, tag)
        if disk.image is not None:
            storage.refresh(pool)
            image_source({v.name: v for v in storage.list_volumes(pool)}, disk.image)
            guard()
            path = storage.clone_volume(pool, vol, image_volume_name(disk.image),
                                        full=disk.full_clone, capacity_mib=disk.size_mib,
                                        fmt=fmt)
        elif disk.size_mib is not None:
            guard()
            path = storage.create_volume(pool, vol, disk.size_mib, fmt=fmt)
        else:
            raise InvalidSpec("disk", disk.path, "a size or an image (vm disk add)")
        place = luns.placement(cluster, vol, str(path), fmt)
        try:
            guard()
            if isinstance(place, designer.IscsiDiskPlacement):
                luns.export_lun(cluster, vol, str(path), must=(host,))
                device = designer.network_disk_device(place, disk.bus, dev, serial=disk_name,
                                                      boot_order=None)
            else:
                device = designer.disk_device(str(path), disk.bus, dev, serial=disk_name,
                                              boot_order=None)
            guard()
            dom.attach_device(device)
        except BaseException:
            if still(guard):
                with suppress(AhvliteError):
                    luns.forget_lun(cluster, vol)
                    storage.delete_volume(pool, vol)
            raise
        # Attached: from here on the volume is the VM's, whatever else fails.
        meta.set_disk(disk_name, dev, vol)
        dom.set_metadata(meta)
        return info_of(host, dom)


def add_nic(cluster: ClusterSpec, name: str, nic: NicSpec) -> VmInfo:
    with connect(cluster) as hosts:
        host, dom = hosts.find(name)
        d = dom.config(inactive=True)
        macs = {i.mac for i in d.devices.interfaces} if d.devices else set()
        if nic.mac is not None and nic.mac in macs:
            raise Conflict(f"{name} already has a NIC with MAC {nic.mac}")
        spec = VmSpec(name=name, memory_mib=64, nics=[nic]).with_macs()
        nic = spec.nics[0]
        iface = designer.interface(nic, d.uuid or "", networks_of(cluster, host))
        dom.attach_device(iface)
        meta = d.meta or d.ensure_meta()
        assert nic.mac is not None
        meta.set_nic(nic.mac, nic.network)
        dom.set_metadata(meta)
        return info_of(host, dom)


def remove_nic(cluster: ClusterSpec, name: str, mac: str) -> VmInfo:
    with connect(cluster) as hosts:
        host, dom = hosts.find(name)
        d = dom.config(inactive=True)
        ifaces = [i for i in (d.devices.interfaces if d.devices else [])
                  if (i.mac or "").lower() == mac.lower()]
        if not ifaces:
            known = [i.mac for i in d.devices.interfaces] if d.devices else []
            raise NotFound(f"{name} has no NIC with MAC {mac}",
                           hint=f"its NICs: {', '.join(str(m) for m in known) or 'none'}")
        dom.detach_device(ifaces[0])
        meta = d.meta or d.ensure_meta()
        meta.remove_nic(mac.lower())
        dom.set_metadata(meta)
        return info_of(host, dom)


