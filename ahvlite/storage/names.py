"""iSCSI names of the storage path (pure).

One target per VM disk, on every host's tgtd, all with the same IQN and LUN 1 backed
by the same shared-pool volume file: a login for that IQN may be redirected to any
host's target and finds the same bytes. (Like AHV, which has one target per vDisk.)
A per-disk target also makes QEMU's one-session-per-disk visible in the target's own
session list: target IQN = the disk, initiator name = the VM, address = its host.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from ahvlite.spec.storage import TARGET_PORT

IQN_PREFIX = "iqn.2024-01.io.ahvlite"
# Each target's disk is LUN 1: tgt keeps LUN 0 for its controller.
DISK_LUN = 1
# The target every tgtd of the cluster has once its disks are exported; the
# redirector's health sessions log in to it (section "health" in redirector.py).
HEALTH_TARGET = f"{IQN_PREFIX}:health"
# QEMU's initiator name when libvirt passes the domain UUID (QEMU's get_initiator_name).
QEMU_INITIATOR_PREFIX = "iqn.2008-11.org.linux-kvm:"
# What the redirector serves on each host (AHV's port), and where targets listen.
REDIRECTOR_ADDRESS = "127.0.0.1"
REDIRECTOR_PORT = 3261
# iSCSI names are at most 223 bytes (RFC 7143 4.2.7.1).
MAX_NAME = 223

_VOLUME_TARGET = f"{IQN_PREFIX}:vol:"
_SAFE = re.compile(r"[^a-z0-9.-]")
# Volumes the storage path exports: the VM layer names iSCSI-backed disks like this.
_LUN_VOLUME = re.compile(r"^vm-[A-Za-z0-9_.+-]+\.raw$")


def volume_target(volume: str) -> str:
    """The target IQN of a shared-pool volume (the same on every host).

    IQNs are lower-case letters, digits, '.', '-' and ':'; a volume name that does not
    map as it is gets a hash after a second ':', which no mapped name can contain, so
    two volumes never share a target.
    """
    slug = _SAFE.sub("-", volume.lower())
    room = MAX_NAME - len(_VOLUME_TARGET)
    if slug == volume and len(slug) <= room:
        return _VOLUME_TARGET + slug
    digest = hashlib.sha256(volume.encode()).hexdigest()[:12]
    return f"{_VOLUME_TARGET}{slug[:room - 14]}:{digest}"


def is_volume_target(iqn: str) -> bool:
    return iqn.startswith(_VOLUME_TARGET)


def is_lun_volume(name: str) -> bool:
    """A shared-pool file the storage path exports (an iSCSI-backed VM disk)."""
    return bool(_LUN_VOLUME.fullmatch(name))


def lun_volume(vm: str, disk: str, tag: str) -> str:
    """The shared-pool volume of an iSCSI-backed VM disk (raw: tgt serves bytes)."""
    return f"vm-{vm}-{disk}-{tag}.raw"


def source_name(iqn: str, lun: int = DISK_LUN) -> str:
    """libvirt's ``<source protocol='iscsi' name=...>``: ``IQN/LUN``."""
    return f"{iqn}/{lun}"


def redirector_initiator(host: str) -> str:
    return f"{IQN_PREFIX}:redirector:{_SAFE.sub('-', host.lower())}"


def vm_uuid_of(initiator: str) -> str | None:
    """The VM UUID in QEMU's default initiator name, if that is what it is."""
    if not initiator.startswith(QEMU_INITIATOR_PREFIX):
        return None
    try:
        return str(uuid.UUID(initiator.removeprefix(QEMU_INITIATOR_PREFIX)))
    except ValueError:
        return None


def portal(address: str, port: int = TARGET_PORT) -> str:
    """``ADDRESS:PORT`` as TargetAddress carries it (IPv6 in brackets)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
