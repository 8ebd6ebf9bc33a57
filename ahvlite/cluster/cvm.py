"""The CVM on a host: plan, deploy, status, stop, start, remove.

Facts come from libvirt (node devices, online CPUs) and, over SSH, the host's sysfs;
:mod:`ahvlite.cluster.cvmplan` decides (pure). What a deployment made beyond the
domain (lab loop devices) is recorded in the cluster state document ``cvm`` so
``cvm remove`` undoes exactly that; a failed deployment undoes what it made.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ahvlite.cluster import cvmplan
from ahvlite.cluster.inventory import ssh_target
from ahvlite.cluster.paths import IMAGES_DIR, confine
from ahvlite.cluster.state import ClusterState
from ahvlite.cluster.vms import connect, host_policy, shared_pool
from ahvlite.errors import (
    AhvliteError,
    Conflict,
    InvalidSpec,
    NotFound,
    OperationFailed,
    Unsupported,
)
from ahvlite.remote.ssh import SshTarget
from ahvlite.remote.ssh import run as ssh_run
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.spec.labels import is_pinned
from ahvlite.spec.vm import new_uuid
from ahvlite.virt import cvmhost, guest, imageinfo, nodedev, storage
from ahvlite.virt.conn import Connection
from ahvlite.virt.designer import DiskPlacement
from ahvlite.virt.guest import Guest
from ahvlite.virt.nodedev import HostSysView, PciFunction
from ahvlite.virt.seediso import build_iso
from ahvlite.virt.xml.domain import VmMeta

Report = Callable[[str], None]
STATE_KEY = "cvm"
# The CVM's own disks live on the host, like AHV's CVM on its boot device: a
# host-local directory pool, never the shared one.
CVM_POOL = "ahvlite-cvm"
CVM_POOL_DIR = Path("/var/lib/libvirt/ahvlite-cvm")


def _quiet(_msg: str) -> None:
    pass


@dataclass(frozen=True)
class HostEvidence:
    functions: list[PciFunction]
    view: HostSysView
    cpus: tuple[int, ...]


def _target(spec: HostSpec, what: str) -> SshTarget:
    target = ssh_target(spec)
    if target is None:
        raise InvalidSpec(f"hosts[{spec.name}].ssh", None,
                          f"an ssh entry: {what} runs over SSH on the host",
                          hint="`ahvlite host add ... --ssh root@HOST` records one")
    return target


def read_host_view(spec: HostSpec) -> HostSysView:
    """The host's sysfs and /proc, read in one SSH round trip."""
    out = ssh_run(_target(spec, "reading sysfs"), ["sh", "-c", nodedev.HOST_SCRIPT],
                  timeout_s=60).stdout
    return nodedev.parse_host_script(out)


def gather(conn: Connection, spec: HostSpec) -> HostEvidence:
    return HostEvidence(functions=nodedev.list_pci_functions(conn),
                        view=read_host_view(spec), cpus=cvmhost.online_cpus(conn))


def plan(cluster: ClusterSpec, host: str, *, controllers: tuple[str, ...] = (),
         lab_luns: int = 0) -> cvmplan.CvmPlan:
    spec = cluster.host(host)
    with connect(cluster) as hosts:
        ev = gather(hosts.conn(host), spec)
    return cvmplan.plan_cvm(host, ev.functions, ev.view, requested=controllers,
                            lab_luns=lab_luns)


def refuse_blocked(p: cvmplan.CvmPlan) -> None:
    """Raise the first reason ``p`` cannot be deployed, with its fix."""
    for c in p.controllers:
        if c.selected and c.problems:
            first = c.problems[0]
            raise InvalidSpec("controller", c.address,
                              f"a controller that can be passed through; it {first.message}",
                              hint=first.fix)
    if p.selected:
        for check in p.checks:
            if check.blocking and not check.ok:
                raise Unsupported(f"{p.host} cannot pass controllers through: {check.detail}",
                                  hint=check.fix)
    if not p.selected and not p.lab_luns:
        reasons = "; ".join(f"{c.address}: {c.problems[0].message}" for c in p.controllers
                            if c.problems) or "it has no storage controller"
        raise InvalidSpec("controller", None,
                          f"a storage controller of {p.host} that can be passed through "
                          f"({reasons})",
                          hint=f"`ahvlite cvm plan {p.host}` shows each reason with its fix; "
                               "without an IOMMU use --lab-lun FILE")


# -- lab LUNs: loop devices on the host --------------------------------------------------

def _loop_attach(target: SshTarget, file: str) -> str:
    out = ssh_run(target, ["losetup", "--find", "--show", file], timeout_s=30).stdout
    device = out.strip()
    if not device.startswith("/dev/loop"):
        raise OperationFailed(f"{target.host}: losetup gave {device!r} for {file}")
    return device


def _loop_detach(target: SshTarget, device: str, file: str) -> bool:
    """Detach ``device`` only while it is still backed by ``file`` (never another's)."""
    script = (f"b=$(losetup -n -O BACK-FILE {shlex.quote(device)} 2>/dev/null) && "
              f"[ \"$b\" = {shlex.quote(file)} ] && losetup -d {shlex.quote(device)}")
    return ssh_run(target, ["sh", "-c", script], timeout_s=30, check=False).rc == 0


def lun_roots(conn: Connection, cluster: ClusterSpec) -> tuple[str, ...]:
    """Where lab LUN files may be: what the cluster owns (the shared pool's directory,
    ahvlite's image directory), never any file of the host."""
    try:
        return (str(storage.pool_path(storage.lookup_pool(conn, shared_pool(cluster)))),
                IMAGES_DIR)
    except AhvliteError:
        return (IMAGES_DIR,)


def _check_lun_files(target: SshTarget, host: str, files: list[str],
                     roots: tuple[str, ...]) -> None:
    for f in files:
        if not f.startswith("/"):
            raise InvalidSpec("lab_lun", f, "an absolute path of a file on the host")
        confine("lab_lun", f, roots, hint="put the LUN file in the cluster's shared pool "
                                          f"or in {IMAGES_DIR}/")
        if ssh_run(target, ["test", "-f", f], timeout_s=20, check=False).rc != 0:
            raise InvalidSpec("lab_lun", f, f"an existing regular file on {host}",
                              hint=f"e.g. truncate -s 64M {f} (on {host})")


# -- deploy -------------------------------------------------------------------------

def _volume_names(host: str, fmt: str) -> tuple[str, str]:
    name = cvmplan.cvm_name(host)
    return f"{name}-boot.{'qcow2' if fmt == 'qcow2' else 'img'}", f"{name}-seed.iso"


def deploy(cluster: ClusterSpec, host: str, *, image: Path,
           vcpus: int = cvmplan.DEFAULT_VCPUS, memory_mib: int = cvmplan.DEFAULT_MEMORY_MIB,
           controllers: tuple[str, ...] = (), lab_luns: tuple[str, ...] = (),
           mgmt_vlan: int | None = None, start: bool = True,
           report: Report = _quiet) -> dict[str, Any]:
    """Deploy ``host``'s CVM; everything is checked first and undone on failure."""
    spec = cluster.host(host)
    name = cvmplan.cvm_name(host)
    if not image.is_file():
        raise InvalidSpec("image", str(image), "an existing disk image file (qcow2 or raw)")
    image_fmt = imageinfo.inspect_image(image).format  # no backing or data file
    state = cluster.state
    with connect(cluster) as hosts:
        conn = hosts.conn(host)
        if guest.find(conn, name) is not None:
            raise Conflict(f"{host} already has its CVM {name}",
                           hint=f"`ahvlite cvm remove {host}` first (one CVM per host)")
        report(f"reading {host}'s PCI devices and sysfs")
        ev = gather(conn, spec)
        p = cvmplan.plan_cvm(host, ev.functions, ev.view, requested=controllers,
                             lab_luns=len(lab_luns))
        refuse_blocked(p)
        target = _target(spec, "--lab-lun") if lab_luns else None
        if target is not None:
            _check_lun_files(target, host, list(lab_luns), lun_roots(conn, cluster))
        policy = host_policy(hosts, host)
        fmt = image_fmt
        boot_vol, seed_vol = _volume_names(host, fmt)
        uuid = new_uuid()

        def design(boot: str, seed: str, luns: list[cvmplan.Lun]) -> str:
            return cvmplan.design_cvm(cvmplan.CvmDesign(
                host=host, uuid=uuid, vcpus=vcpus, memory_mib=memory_mib,
                boot_disk=DiskPlacement(boot, boot_vol, fmt), host_cpus=ev.cpus,
                controllers=p.selected, luns=tuple(luns),
                seed_iso=DiskPlacement(seed, seed_vol, "raw"),
                lock_memory=p.memory_lock, memory_hard_limit=p.memory_lock_limit,
                mgmt_vlan=mgmt_vlan,
                serial_log=f"/var/log/libvirt/qemu/{name}-serial.log"), policy).to_xml()

        # A dry run with placeholders: bad vCPU counts and memory sizes fail here.
        design("/dev/null/boot", "/dev/null/seed",
               [cvmplan.Lun(f"/dev/null/{i}", False) for i in range(len(lab_luns))])

        warnings = [c.detail for c in p.checks if not c.ok and not c.blocking]
        for w in warnings:
            report(f"warning: {w}")
        made = _Made()
        made_vols, loops = made.volumes, made.loops
        try:
            pool, made.pool_created = cvmhost.ensure_local_pool(conn, CVM_POOL, CVM_POOL_DIR)
            made.pool = pool
            report(f"uploading {image.name} as {boot_vol}")
            for stale in (boot_vol, seed_vol):
                if storage.find_volume(pool, stale) is not None:
                    raise Conflict(f"volume {stale} is left over from an earlier CVM on {host}",
                                   hint=f"`ahvlite cvm remove {host}` removes it")
            boot_path = storage.upload_volume(conn, pool, boot_vol, image, fmt=fmt)
            made_vols.append(boot_vol)
            seed_path = storage.upload_bytes(conn, pool, seed_vol,
                                             build_iso(cvmplan.seed_files(host)))
            made_vols.append(seed_vol)
            luns = []
            for f in lab_luns:
                assert target is not None
                device = _loop_attach(target, f)
                loops.append({"file": f, "device": device})
                report(f"lab LUN {f} is {device}")
                # Loop devices do not answer SG_IO: plain disks on the SCSI bus.
                luns.append(cvmplan.Lun(device, scsi_passthrough=False))
            state.update(STATE_KEY, lambda doc: {**doc, host: {
                "name": name, "controllers": list(p.selected), "lab_luns": loops,
                "volumes": made_vols}})
            report(f"defining {name}")
            made.dom = dom = guest.define(
                conn, design(str(boot_path), str(seed_path), luns))
            dom.set_autostart(True)
            if start:
                report(f"starting {name}" + (f" with {', '.join(p.selected)} passed through"
                                             if p.selected else ""))
                dom.start()
        except BaseException:
            undo_deploy(made, host, state, target)
            raise
        return {**status_of(host, conn, state), "warnings": warnings}


@dataclass
class _Made:
    """What a deployment has made so far (undone by :func:`undo_deploy`)."""

    dom: Guest | None = None
    pool: Any = None
    pool_created: bool = False
    volumes: list[str] = field(default_factory=list)
    loops: list[dict[str, str]] = field(default_factory=list)


def undo_deploy(made: _Made, host: str, state: ClusterState,
                target: SshTarget | None) -> None:
    """Undo a failed deployment. Every step on its own: one that fails (a domain that
    will not power off) must not leave the rest behind (the definition)."""
    if made.dom is not None:
        with suppress(AhvliteError):
            made.dom.destroy()
        with suppress(AhvliteError):
            made.dom.undefine()
    if made.pool is not None:
        for vol in made.volumes:
            with suppress(AhvliteError):
                storage.delete_volume(made.pool, vol)
        if made.pool_created:
            with suppress(AhvliteError):
                # Files of an earlier CVM found there keep the pool (cvm remove).
                if not storage.list_volumes(made.pool):
                    cvmhost.remove_pool(made.pool)
    for loop in made.loops:
        with suppress(AhvliteError):
            if target is not None:
                _loop_detach(target, loop["device"], loop["file"])
    with suppress(AhvliteError):
        state.update(STATE_KEY, lambda doc: {k: v for k, v in doc.items() if k != host})


# -- status / power / remove ----------------------------------------------------------

def status_of(host: str, conn: Connection, state: ClusterState) -> dict[str, Any]:
    name = cvmplan.cvm_name(host)
    recorded = state.get(STATE_KEY).get(host, {})
    dom = guest.find(conn, name)
    if dom is None:
        return {"host": host, "name": name, "state": "absent", "recorded": bool(recorded)}
    d = dom.config()
    devs = d.devices
    labels = (d.meta or VmMeta()).labels
    hostdevs = [h.address for h in devs.hostdevs] if devs else []
    return {
        "host": host, "name": name, "state": dom.state(),
        "autostart": dom.autostart(), "vcpus": d.vcpus, "memory_mib": d.memory_mib,
        "vcpu_pins": d.cputune.pins if d.cputune else {},
        "memory_locked": bool(d.memory_backing and d.memory_backing.locked),
        "memory_hard_limit_mib": d.memtune.hard_limit_mib if d.memtune else None,
        "controllers": hostdevs,
        "luns": [x.source_dev for x in (devs.disks if devs else []) if x.type == "block"],
        "lab_luns": recorded.get("lab_luns", []),
        "nics": [{"mac": i.mac, "bridge": i.source_bridge}
                 for i in (devs.interfaces if devs else [])],
        "address": cvmplan.CVM_ADDRESS, "on_crash": d.on_crash, "labels": labels,
        "pinned": is_pinned(labels, has_pci_hostdev=bool(hostdevs)),
    }


def status(cluster: ClusterSpec, host: str | None = None) -> list[dict[str, Any]]:
    names = [cluster.host(host).name] if host else [h.name for h in cluster.hosts]
    state = cluster.state
    out = []
    with connect(cluster) as hosts:
        for h in names:
            if h in hosts.errors:
                out.append({"host": h, "name": cvmplan.cvm_name(h), "state": "unreachable",
                            "error": hosts.errors[h]})
                continue
            out.append(status_of(h, hosts.conn(h), state))
    return out


def _find(conn: Connection, host: str) -> Guest:
    dom = guest.find(conn, cvmplan.cvm_name(host))
    if dom is None:
        raise NotFound(f"{host} has no CVM", hint=f"`ahvlite cvm deploy {host} --image ...`")
    return dom


def start(cluster: ClusterSpec, host: str) -> dict[str, Any]:
    with connect(cluster) as hosts:
        conn = hosts.conn(host)
        _find(conn, host).start()
        return status_of(host, conn, cluster.state)


def stop(cluster: ClusterSpec, host: str, *, force: bool = False,
         timeout_s: float = 120) -> dict[str, Any]:
    """ACPI shutdown (the CVM flushes its disks); power off after ``timeout_s`` only
    with ``force``."""
    with connect(cluster) as hosts:
        conn = hosts.conn(host)
        dom = _find(conn, host)
        dom.shut_down(timeout_s=timeout_s, force=force)
        return status_of(host, conn, cluster.state)


def remove(cluster: ClusterSpec, host: str,
           report: Report = _quiet) -> dict[str, Any]:
    """Power off and undefine the CVM, give its controllers back to the host, delete
    its volumes and detach its lab loop devices."""
    spec = cluster.host(host)
    state = cluster.state
    recorded = state.get(STATE_KEY).get(host, {})
    name = cvmplan.cvm_name(host)
    out: dict[str, Any] = {"host": host, "name": name, "undefined": False,
                           "reattached": [], "deleted_volumes": [], "detached_loops": []}
    with connect(cluster) as hosts:
        conn = hosts.conn(host)
        dom = guest.find(conn, name)
        if dom is None and not recorded:
            raise NotFound(f"{host} has no CVM", hint="`ahvlite cvm status` lists them")
        controllers = list(recorded.get("controllers", []))
        if dom is not None:
            d = dom.config(inactive=True)
            controllers += [h.address for h in (d.devices.hostdevs if d.devices else [])
                            if h.address and h.address not in controllers]
            report(f"powering off {name}")
            dom.destroy()  # libvirt hands managed hostdevs back here
            dom.undefine()
            out["undefined"] = True
        for address in controllers:
            if nodedev.reattach(conn, address):
                out["reattached"].append(address)
        # Looked up, not ensured: a host that never had the pool does not get one here.
        pool = cvmhost.find_local_pool(conn, CVM_POOL)
        boot_q, seed = _volume_names(host, "qcow2")
        boot_raw, _ = _volume_names(host, "raw")
        for vol in dict.fromkeys([*recorded.get("volumes", []), boot_q, boot_raw, seed]):
            if pool is not None and storage.delete_volume(pool, vol):
                out["deleted_volumes"].append(vol)
        loops = recorded.get("lab_luns", [])
        if loops:
            target = _target(spec, "detaching lab LUNs")
            for loop in loops:
                if _loop_detach(target, loop["device"], loop["file"]):
                    out["detached_loops"].append(loop["device"])
    state.update(STATE_KEY, lambda doc: {k: v for k, v in doc.items() if k != host})
    return out
