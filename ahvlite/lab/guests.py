"""Test guests on lab hosts: boot from the shared disk image, wait until ready."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import asdict, dataclass

from ahvlite.errors import OperationFailed, OperationTimeout
from ahvlite.lab.layout import OVS_BRIDGE, SHARED_POOL, HostLayout, LabLayout
from ahvlite.lab.state import LabState
from ahvlite.spec.vm import DiskSpec, NicSpec, VmSpec
from ahvlite.virt import guest, storage
from ahvlite.virt.conn import connection
from ahvlite.virt.console import Console

READY = re.compile(r"AHVLITE-GUEST-READY ip=(\S+)")
GUEST_BASE = "ahvlite-guest-base.qcow2"


@dataclass(frozen=True)
class LabGuest:
    name: str
    host: str
    address: str  # CIDR
    mac: str
    disk: str
    serial_log: str  # path inside the host

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


def guest_mac(lab: str, name: str) -> str:
    digest = hashlib.sha256(f"{lab}/{name}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def boot_from_disk(layout: LabLayout, state: LabState, host: HostLayout, name: str,
                   address: str) -> LabGuest:
    """Define and start ``name`` on ``host``, booting a fresh overlay of the base image.

    The guest learns its address from QEMU fw_cfg, so one disk image serves all guests.
    It is rendered by the designer like every VM (its spec travels in its metadata, so
    HA can render it again on another host). Safe to call from several threads at once;
    :func:`record` the results afterwards.
    """
    from ahvlite.cluster import vms
    from ahvlite.cluster.legacy import open_cluster_file as load_cluster

    serial_log = serial_log_path(name)
    mac = guest_mac(layout.name, name)
    if state.domain_type is None:
        raise OperationFailed(f"lab {layout.name} has no domain type yet (lab up unfinished)")
    cluster = load_cluster(layout.cluster_file)
    volume = f"{name}.qcow2"
    spec = VmSpec(name=name, uuid=str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                 f"ahvlite:{layout.name}:{name}")),
                  memory_mib=128, disks=[DiskSpec(name="disk0", volume=volume)],
                  nics=[NicSpec(network=OVS_BRIDGE, mac=mac)],
                  fw_cfg={"opt/ahvlite/ip": address, "opt/ahvlite/hostname": name},
                  serial_log=serial_log)
    with connection(layout.libvirt_uri(host)) as conn:
        guest.destroy_and_undefine(conn, name)
        pool = storage.ensure_dir_pool(conn, SHARED_POOL, layout.shared_dir)
        disk = storage.create_overlay(pool, volume, layout.shared_dir / GUEST_BASE)
        xml = vms.render_on_host(conn, cluster, host.name, spec.model_dump(mode="json"),
                                 None, 0)
        (host.state_dir / serial_log.lstrip("/")).unlink(missing_ok=True)
        guest.define(conn, xml).start()
    return LabGuest(name=name, host=host.name, address=address, mac=mac, disk=str(disk),
                    serial_log=serial_log)


def record(layout: LabLayout, state: LabState, booted: list[LabGuest]) -> None:
    """Remember guests in the lab state (for status, and for tests that reuse them)."""
    names = {g.name for g in booted}
    state.guests = [x for x in state.guests if x["name"] not in names]
    state.guests += [asdict(g) for g in booted]
    state.save(layout.state_file)


def wait_ready(layout: LabLayout, g: LabGuest, *, timeout_s: float = 120) -> float:
    """Wait for the guest's ready line on its serial log; return seconds waited."""
    host = layout.host(g.host)
    log = host.state_dir / g.serial_log.lstrip("/")
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if log.exists():
            match = READY.search(log.read_text(errors="replace"))
            if match:
                return time.monotonic() - started
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-800:] if log.exists() else "(no serial log)"
    raise OperationTimeout(f"guest {g.name} on {g.host} was not ready in {timeout_s:.0f} s; "
                           f"serial console ends with:\n{tail}")


def console_run(layout: LabLayout, g: LabGuest, command: str, *,
                timeout_s: float = 30) -> tuple[int, str]:
    """Run a shell command on the guest's serial console (through libvirt)."""
    host = layout.host(g.host)
    with connection(layout.libvirt_uri(host)) as conn, \
            Console(conn, guest.lookup(conn, g.name)) as con:
        return con.run(command, timeout_s=timeout_s)


def serial_log_path(name: str) -> str:
    """Where a lab guest created through the VM layer logs its serial console (inside
    its host; the host's state dir holds it in the root namespace)."""
    return f"/var/log/libvirt/qemu/{name}-serial.log"


def vm_spec(name: str, ip: str | None = None, *, dirty_mib_s: int = 0,
            labels: dict[str, str] | None = None) -> VmSpec:
    """The test guest as a VM spec for ``vm create``: 128 MiB, the shared ``guest``
    image, one NIC on br0; ``ip`` (CIDR) fixed through fw_cfg, and ``dirty_mib_s`` the
    guest's memory-dirtying workload (``opt/ahvlite/dirty``)."""
    fw = {"opt/ahvlite/hostname": name}
    if ip:
        fw["opt/ahvlite/ip"] = ip
    if dirty_mib_s:
        fw["opt/ahvlite/dirty"] = str(dirty_mib_s)
    return VmSpec(name=name, memory_mib=128, disks=[DiskSpec(image="guest")],
                  nics=[NicSpec(network=OVS_BRIDGE)], fw_cfg=fw,
                  serial_log=serial_log_path(name), labels=labels or {})
