"""The shared pool's images (``image-NAME`` volumes): list, upload, find, delete."""

from __future__ import annotations

from collections.abc import Callable

from ahvlite.cluster.guard import Guard, no_guard
from ahvlite.cluster.vms import IMAGE_PREFIX, connect, image_volume_name
from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.virt import imageinfo, storage


def images(cluster: ClusterSpec) -> list[storage.VolumeInfo]:
    with connect(cluster) as hosts:
        _, pool = hosts.any_pool()
        storage.refresh(pool)
        return [v for v in storage.list_volumes(pool) if v.name.startswith(IMAGE_PREFIX)]


def upload_image(cluster: ClusterSpec, image: imageinfo.ImageInfo, name: str, *,
                 report: Callable[[int, int], None] | None = None,
                 guard: Guard = no_guard) -> storage.VolumeInfo:
    """Upload an inspected image file into the shared pool as image ``name``."""
    with connect(cluster) as hosts:
        host, pool = hosts.any_pool()
        vol = image_volume_name(name)
        guard()
        storage.upload_volume(hosts.conn(host), pool, vol, image.path, report=report,
                              fmt=image.format)
        found = storage.find_volume(pool, vol)
        assert found is not None
        info = storage.volume_info(found)
        if info.backing:  # the file changed since it was inspected: never keep that
            storage.delete_volume(pool, vol)
            raise InvalidSpec("image", name, "an image without a backing file",
                              hint=f"the uploaded copy names {info.backing!r}")
        for other in hosts.conns:
            if other != host:
                storage.refresh(hosts.pool(other))
        return info


def image_volume(cluster: ClusterSpec, name: str) -> storage.VolumeInfo | None:
    """Image ``name``'s volume in the shared pool, if there is one."""
    with connect(cluster) as hosts:
        _, pool = hosts.any_pool()
        storage.refresh(pool)
        found = storage.find_volume(pool, image_volume_name(name))
        return None if found is None else storage.volume_info(found)


def delete_image_volume(cluster: ClusterSpec, name: str) -> bool:
    with connect(cluster) as hosts:
        _, pool = hosts.any_pool()
        return storage.delete_volume(pool, image_volume_name(name))
