"""VMs across the cluster: create (placed, rolled back on failure), power, hot-plug,
list, show, delete. libvirt only through ``ahvlite.virt``."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ahvlite.cluster import cpustore, luns, schedulable
from ahvlite.cluster.adsrules import host_loads, load_rules
from ahvlite.cluster.guard import Guard, no_guard, still
from ahvlite.cluster.inventory import parallel
from ahvlite.cluster.paths import check_spec_paths
from ahvlite.errors import AhvliteError, Conflict, HostUnreachable, InvalidSpec, NotFound
from ahvlite.sched.capacity import HostCapacity
from ahvlite.sched.place import AdsRules, Want, place
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.spec.labels import DOMAIN_TYPE_LABEL, is_pinned
from ahvlite.spec.network import NetworkSpec
from ahvlite.spec.vm import DiskSpec, VmSpec
from ahvlite.virt import cpu, designer, facts, guest, storage
from ahvlite.virt.conn import Connection, StoragePool, close_quietly, open_connection
from ahvlite.virt.cpu import CpuDef
from ahvlite.virt.designer import Design, DiskPlacement, HostPolicy
from ahvlite.virt.guest import Guest
from ahvlite.virt.pool import ConnectionPool
from ahvlite.virt.xml.domain import VmMeta

Report = Callable[[str], None]
IMAGE_PREFIX = "image-"
# Preferred named CPU models, most capable first; the first one the host can run wins
# (until the cluster CPU baseline exists).
CPU_PREFERENCE = ("EPYC", "Skylake-Client", "Haswell-noTSX", "Westmere", "Nehalem",
                  "qemu64")


def _quiet(_msg: str) -> None:
    pass


@dataclass
class VmInfo:
    name: str
    uuid: str
    host: str
    state: str
    vcpus: int
    memory_mib: int
    current_memory_mib: int
    overcommit: bool
    genid: str | None
    firmware: str
    vtpm: bool
    disks: list[dict[str, Any]] = field(default_factory=list)
    nics: list[dict[str, Any]] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    template: str | None = None
    pinned: bool = False  # stays on its host: pinned label or a PCI host device

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Volume names carry a tag of the attempt that made them (a task's attempt, or a random
# one in process): two attempts at one VM, or two VMs of one name, never share a name,
# so an undo can only ever delete its own. Anything that later needs a VM's volumes
# reads them from its metadata (VmMeta.volumes, os/nvram), never from these names.

def new_tag() -> str:
    return secrets.token_hex(4)


def vm_volume(vm: str, disk: str, tag: str) -> str:
    return f"vm-{vm}-{disk}-{tag}.qcow2"


def nvram_volume(vm: str, tag: str) -> str:
    return f"vm-{vm}-VARS-{tag}.fd"


def seed_volume(vm: str, tag: str) -> str:
    return f"vm-{vm}-seed-{tag}.iso"


def disk_volumes(vm: str, disk: str, tag: str) -> list[str]:
    """The names a disk's volume may have with ``tag`` (a file, or an iSCSI LUN's)."""
    return [vm_volume(vm, disk, tag), luns.lun_volume(vm, disk, tag)]


def tagged_volumes(spec: VmSpec, tag: str) -> list[str]:
    """Every volume name :func:`create_on_host` may make for ``spec`` with ``tag``."""
    return [*(vm_volume(spec.name, n, tag) for n in spec.disk_names()),
            *(luns.lun_volume(spec.name, n, tag) for n in spec.disk_names()),
            nvram_volume(spec.name, tag)]


def image_volume_name(image: str) -> str:
    return f"{IMAGE_PREFIX}{image}"


# -- connections --------------------------------------------------------------------

T = TypeVar("T")

@dataclass
class Hosts:
    """Open connections to the cluster's hosts (unreachable ones recorded)."""

    cluster: ClusterSpec
    conns: dict[str, Connection]
    errors: dict[str, str]
    # Hosts that stopped answering during the operation: their connections are
    # closed when it ends, never given back for reuse.
    dropped: dict[str, Connection] = field(default_factory=dict)

    def drop(self, host: str, exc: HostUnreachable) -> None:
        """``host`` died mid-operation: from now on it counts as unreachable (a read
        goes on without it, as if it had not answered the connect)."""
        conn = self.conns.pop(host, None)
        if conn is not None:
            self.dropped[host] = conn
        self.errors[host] = exc.message

    def each(self, fn: Callable[[str, Connection], T]) -> dict[str, T]:
        """``fn`` on every reachable host in parallel; a host that turns out to be
        gone is dropped (see :meth:`drop`) and left out of the answer."""
        def one(host: str) -> tuple[str, T | HostUnreachable]:
            try:
                return host, fn(host, self.conns[host])
            except HostUnreachable as exc:
                return host, exc
        out: dict[str, T] = {}
        for host, got in parallel(one, list(self.conns)):
            if isinstance(got, HostUnreachable):
                self.drop(host, got)
            else:
                out[host] = got
        return out

    def conn(self, host: str) -> Connection:
        if host in self.conns:
            return self.conns[host]
        if host in self.errors:
            raise HostUnreachable(f"host {host}: {self.errors[host]}")
        self.cluster.host(host)
        raise NotFound(f"host {host} is not connected")

    def pool(self, host: str) -> StoragePool:
        return storage.lookup_pool(self.conn(host), shared_pool(self.cluster))

    def any_pool(self) -> tuple[str, StoragePool]:
        for name in self.conns:
            return name, self.pool(name)
        raise NotFound("no host of the cluster answers")

    def find(self, name: str) -> tuple[str, Guest]:
        for host, conn in self.conns.items():
            g = guest.find(conn, name)
            if g is not None:
                return host, g
        where = f" (unreachable: {', '.join(self.errors)})" if self.errors else ""
        raise NotFound(f"no VM named {name!r} in cluster {self.cluster.name!r}{where}",
                       hint="`ahvlite vm list` shows the VMs")


# A long-lived process (the controller) keeps connections between operations; see
# virt/pool.py. Without one (tests, tools), each operation opens its own.
_pool: ConnectionPool | None = None


def use_pool(pool: ConnectionPool | None) -> None:
    global _pool
    _pool = pool


def connection_counts(cluster: ClusterSpec) -> dict[str, dict[str, int]]:
    """Per host of ``cluster``: the connections this process's pool opened to it and
    lent out (one lease per operation that went to the host); empty without a pool."""
    pool = _pool
    if pool is None:
        return {}
    counts = pool.counted()
    return {h.name: counts.get(h.uri, {"opened": 0, "leased": 0}) for h in cluster.hosts}


@contextmanager
def connect(cluster: ClusterSpec, *, timeout_s: float = 10) -> Iterator[Hosts]:
    """A connection to every host of ``cluster`` (in parallel); the unreachable ones
    are recorded in ``errors``. With a pool the connections are leased from it, each
    to this operation alone, and go back when it ends (closed when it failed)."""
    pool = _pool

    def one(h: HostSpec) -> tuple[str, Connection | None, str | None]:
        try:
            if pool is not None:
                return h.name, pool.acquire(h.uri, timeout_s=timeout_s), None
            return h.name, open_connection(h.uri, timeout_s=timeout_s), None
        except AhvliteError as exc:
            return h.name, None, exc.message

    results = parallel(one, list(cluster.hosts))
    conns = {n: c for n, c, _ in results if c is not None}
    errors = {n: e for n, _, e in results if e is not None}
    ok = False
    hosts = Hosts(cluster, conns, errors)
    try:
        yield hosts
        ok = True
    except AhvliteError as exc:
        # Our own refusals (not found, conflict) leave the connections sound; a host
        # that failed mid-call may not have.
        ok = not isinstance(exc, HostUnreachable)
        raise
    finally:
        uris = {h.name: h.uri for h in cluster.hosts}
        for name, c in conns.items():
            if pool is not None:
                pool.release(uris[name], c, ok=ok)
            else:
                close_quietly(c)
        for c in hosts.dropped.values():
            close_quietly(c)


def volumes_in_use(hosts: Hosts) -> set[str]:
    """File names of every volume a VM on a reachable host refers to (its disks, its
    metadata's volumes, its NVRAM): what a cleanup must never delete."""
    used: set[str] = set()
    for conn in hosts.conns.values():
        for g in guest.all_guests(conn):
            d = g.config(inactive=True)
            used |= set((d.meta or VmMeta()).volumes.values())
            used |= {Path(x.source_file).name for x in (d.devices.disks if d.devices else [])
                     if x.source_file}
            if d.os is not None and d.os.nvram:
                used.add(Path(d.os.nvram).name)
    return used


def shared_pool(cluster: ClusterSpec) -> str:
    if not cluster.shared_pool:
        raise InvalidSpec("shared_pool", None, "the name of the storage pool every host "
                          "shares (set shared_pool in the cluster file)")
    return cluster.shared_pool


def host_policy_domain_type(spec: HostSpec) -> str:
    domain_type = spec.labels.get(DOMAIN_TYPE_LABEL) or "kvm"
    return domain_type if domain_type in ("kvm", "qemu") else "kvm"


def host_policy(hosts: Hosts, host: str, cpu_level: CpuDef | None = None) -> HostPolicy:
    return policy_on(hosts.conn(host), hosts.cluster, host, cpu_level)


def policy_on(conn: Connection, cluster: ClusterSpec, host: str,
              cpu_level: CpuDef | None = None) -> HostPolicy:
    """The designer's view of ``host`` (reached through ``conn``)."""
    domain_type = host_policy_domain_type(cluster.host(host))
    if cpu_level is not None:
        return level_policy(conn, domain_type, cpu_level)
    usable = facts.usable_cpu_models(conn, domain_type)
    model = next((m for m in CPU_PREFERENCE if m in usable), None)
    if model is None:
        model = "qemu64"  # every QEMU runs it; drivers that cannot tell (test://) too
    return HostPolicy(domain_type=domain_type, cpu_model=model)


def level_policy(conn: Connection, domain_type: str, level: CpuDef) -> HostPolicy:
    """The cluster CPU level on one host; under TCG without what the emulator lacks."""
    unusable: frozenset[str] = frozenset()
    if domain_type == "qemu":
        host_model = cpu.host_model_of(cpu.domain_capabilities(conn, domain_type))
        if host_model is not None:
            host = cpu.expanded(host_model, cpu.model_features(host_model.model))
            unusable = cpu.expanded(level, cpu.model_features(level.model)) - host
    return HostPolicy(domain_type=domain_type, cpu_model=level.model,
                      cpu_features=level.features, cpu_disabled=level.disabled,
                      cpu_unusable=unusable)


def networks_of(cluster: ClusterSpec, host: str) -> NetworkSpec:
    return cluster.network.for_host(cluster.host(host).network)


def capacities(hosts: Hosts) -> list[HostCapacity]:
    def one(_host: str, conn: Connection) -> tuple[int, int]:
        # Free = what running VMs do not hold. The kernel's free figure moves with page
        # cache and QEMU's lazy allocation; reservations are what placement must honour.
        total, _ = facts.memory_mib(conn)
        return total, total - facts.reserved_memory_mib(conn)
    got = hosts.each(one)
    return [HostCapacity(h.name, *got[h.name]) if h.name in got
            else HostCapacity(h.name, 0, 0, reachable=False) for h in hosts.cluster.hosts]


# -- reading ------------------------------------------------------------------------

def info_of(host: str, g: Guest) -> VmInfo:
    d = g.config()
    meta = d.meta or VmMeta()
    names = meta.disk_names
    volumes = meta.volumes
    nets = meta.nic_networks
    devs = d.devices
    disks = [{"name": names.get(x.target_dev or "", x.serial or x.target_dev),
              "dev": x.target_dev, "bus": x.target_bus, "path": x.source_file,
              **({"iscsi": x.source_name} if x.source_protocol == "iscsi" else {}),
              "volume": volumes.get(names.get(x.target_dev or "", "") or "")}
             for x in (devs.disks if devs else [])]
    nics = [{"mac": n.mac, "network": nets.get(n.mac or ""), "bridge": n.source_bridge,
             "mode": "trunk" if n.trunk else "access",
             "vlans": n.vlan_tags, "native_vlan": n.native_vlan,
             "interface_id": n.interface_id}
            for n in (devs.interfaces if devs else [])]
    fw = {e.name: e.value for e in d.sysinfo.entries} if d.sysinfo else {}
    os_ = d.os
    return VmInfo(
        name=d.name or "", uuid=d.uuid or "", host=host, state=g.state(),
        vcpus=d.vcpus or 0, memory_mib=d.memory_mib or 0,
        current_memory_mib=d.current_memory_mib or d.memory_mib or 0,
        overcommit=bool(meta.overcommit), genid=d.genid,
        firmware="uefi" if os_ is not None and os_.loader else "bios",
        vtpm=bool(devs and len(devs.tpms)), disks=disks, nics=nics,
        ips=[fw["opt/ahvlite/ip"]] if fw.get("opt/ahvlite/ip") else [],
        labels=meta.labels, template=meta.labels.get("ahvlite.io/template"),
        pinned=is_pinned(meta.labels, has_pci_hostdev=d.has_pci_hostdev))


def list_vms(cluster: ClusterSpec) -> tuple[list[VmInfo], dict[str, str]]:
    """Every VM on every reachable host, and the hosts that did not answer."""
    with connect(cluster) as hosts:
        return list_on(hosts), hosts.errors


def list_on(hosts: Hosts) -> list[VmInfo]:
    """Every VM on the hosts ``hosts`` reaches (an operation's connections), by name."""
    found = hosts.each(lambda host, conn: [info_of(host, g) for g in guest.all_guests(conn)])
    return sorted((v for vs in found.values() for v in vs), key=lambda v: v.name)


def show_vm(cluster: ClusterSpec, name: str) -> VmInfo:
    with connect(cluster) as hosts:
        return info_of(*hosts.find(name))


# -- create -------------------------------------------------------------------------

def image_source(vols: dict[str, storage.VolumeInfo], image: str) -> storage.VolumeInfo:
    vol = vols.get(image_volume_name(image))
    if vol is None:
        known = sorted(v.removeprefix(IMAGE_PREFIX) for v in vols
                       if v.startswith(IMAGE_PREFIX))
        raise InvalidSpec("disk.image", image,
                          f"one of the imported images ({', '.join(known) or 'none yet'})",
                          hint="`ahvlite image import PATH NAME` adds one")
    return vol


def check_new_vm(hosts: Hosts, spec: VmSpec, host: str, *, dry_run: bool = True) -> None:
    """Everything about ``spec`` that can be wrong, checked before anything is made.

    With ``dry_run`` the designer runs on stand-in paths, so bad networks and
    combinations fail here; without, the caller goes on to :func:`create_on_host`,
    which designs the domain (once) before it makes anything."""
    for h, conn in hosts.conns.items():
        if guest.find(conn, spec.name) is not None:
            raise Conflict(f"a VM named {spec.name!r} already exists (on {h})",
                           hint="VM names are unique in the cluster; pick another")
        if guest.find_by_uuid(conn, spec.uuid) is not None:
            raise Conflict(f"uuid {spec.uuid} is already used (on {h})")
    _, pool = hosts.any_pool()
    check_spec_paths(spec, storage.pool_path(pool))
    storage.refresh(pool)
    vols = {v.name: v for v in storage.list_volumes(pool)}
    for d in spec.disks:
        if d.image is not None:
            image_source(vols, d.image)
        for volume in (d.clone_of, d.volume):
            if volume is not None and volume not in vols:
                raise InvalidSpec("disk.volume", volume, "a volume of the shared pool")
    if not dry_run:
        return
    placements = {n: DiskPlacement(f"/dev/null/{n}") for n in spec.disk_names()}
    designer.design(spec, Design(host=HostPolicy(), disks=placements,
                                 networks=networks_of(hosts.cluster, host)
                                 if host else hosts.cluster.network,
                                 nvram_path="/dev/null/nvram"))


def create_vm(cluster: ClusterSpec, spec: VmSpec, *, host: str | None = None,
              start: bool = False, report: Report = _quiet,
              cpu_level: CpuDef | None = None, tag: str | None = None,
              guard: Guard = no_guard, hosts: Hosts | None = None) -> VmInfo:
    """Place, make volumes, define (and start) ``spec``; on failure undo all of it.

    With ``cpu_level`` (the cluster's, see cluster.cpulevel) the VM gets that CPU.
    ``tag`` names this attempt's volumes (random when None); ``guard`` is called before
    every change on a host and raises to stop (a task's leadership check). ``hosts``
    are the operation's connections when the caller already holds them (one
    connection per host for the whole operation); without, they are opened here."""
    if hosts is None:
        with connect(cluster) as opened:
            return create_vm(cluster, spec, host=host, start=start, report=report,
                             cpu_level=cpu_level, tag=tag, guard=guard, hosts=opened)
    spec = spec.with_macs()
    if not hosts.conns:
        raise HostUnreachable(f"no host of cluster {cluster.name} answers: "
                              + "; ".join(f"{h}: {e}" for h, e in hosts.errors.items()))
    # No dry run of the designer: create_on_host designs before it makes anything.
    check_new_vm(hosts, spec, host or next(iter(hosts.conns), ""), dry_run=False)
    need = spec.memory_mib
    if spec.overcommit:
        need = spec.memory_mib * designer.OVERCOMMIT_START_PERCENT // 100
    # Hosts in maintenance take no new VMs (asked for by name: say so).
    closed = schedulable.closed_hosts(cluster, host)
    # Unless named: ADS power-on placement (its rules, CPU balance). A VM that is
    # only defined holds no memory yet: free memory matters at start.
    ads = AdsRules(lambda: load_rules(cluster.state), loads=lambda: host_loads(hosts.conns))
    target = place(capacities(hosts), Want(spec.name, spec.memory_mib, spec.vcpus),
                   strategy=ads, requested=host, need_free_mib=need if start else 0,
                   closed=frozenset(closed))
    report(f"placing {spec.name} on {target}")
    return create_on_host(hosts, target, spec, start=start, report=report,
                          cpu_level=cpu_level, tag=tag, guard=guard)


def create_on_host(hosts: Hosts, target: str, spec: VmSpec, *, start: bool,
                   report: Report, cpu_level: CpuDef | None = None, tag: str | None = None,
                   guard: Guard = no_guard) -> VmInfo:
    """Make ``spec``'s volumes on ``target``, define it (and start it); undo on failure.

    The caller has checked the spec (:func:`check_new_vm`) and placed it. The VM gets
    ``cpu_level``, else the cluster's stored CPU level (every path that creates VMs —
    CLI, controller tasks, template deploys — comes through here). Volumes are named
    with ``tag`` (see :func:`vm_volume`); the undo deletes exactly the ones made here.

    The domain is designed once, before any volume is made, on the paths the new
    volumes will have in the pool: a spec the designer refuses makes nothing.

    ``guard`` runs before each change on the host. When it raises (a deposed leader),
    nothing more happens and nothing is undone: the next leader finds the VM by its
    UUID, or deletes this attempt's tagged volumes that no VM uses. The undo of any
    other failure also runs only while ``guard`` still passes.
    """
    tag = tag or new_tag()
    conn = hosts.conn(target)
    pool = hosts.pool(target)
    pool_dir = storage.pool_path(pool)
    check_spec_paths(spec, pool_dir)  # before anything is made
    made: list[str] = []
    dom = None
    deposed = False

    def check() -> None:
        nonlocal deposed
        try:
            guard()
        except BaseException:
            deposed = True
            raise

    try:
        # storage: iscsi makes raw volumes (a target serves bytes), exported as LUNs.
        iscsi = luns.uses_iscsi(hosts.cluster)
        fmt = "raw" if iscsi else "qcow2"
        placements: dict[str, DiskPlacement] = {}
        new: dict[str, tuple[DiskSpec, str]] = {}  # disk name -> (its spec, volume to make)
        for name, d in zip(spec.disk_names(), spec.disks, strict=True):
            if d.path is not None:
                placements[name] = DiskPlacement(d.path, format="raw" if d.cdrom else "qcow2")
                continue
            if d.volume is not None:
                found = storage.find_volume(pool, d.volume)
                if found is None:
                    raise NotFound(f"volume {d.volume} is not in the pool")
                info = storage.volume_info(found)
                made.append(d.volume)  # handed over: it goes with the VM, or on failure
                # The dir pool calls a seed ISO "iso"; to QEMU it is raw bytes.
                placements[name] = luns.placement(
                    hosts.cluster, d.volume, info.path,
                    "qcow2" if info.format == "qcow2" else "raw", cdrom=d.cdrom)
                continue
            vol = luns.lun_volume(spec.name, name, tag) if iscsi \
                else vm_volume(spec.name, name, tag)
            new[name] = (d, vol)
            placements[name] = luns.placement(hosts.cluster, vol, str(pool_dir / vol), fmt)
        nvram = None
        if spec.boot.firmware == "uefi":
            nvram = str(pool_dir / nvram_volume(spec.name, tag))
        design = Design(
            host=host_policy(hosts, target, cpu_level or cpustore.level_of(hosts.cluster)),
            disks=placements, networks=networks_of(hosts.cluster, target), nvram_path=nvram)
        xml = designer.design_xml(spec, design)
        planned = dict(placements)
        for name, (d, vol) in new.items():
            report(f"disk {name}: volume {vol}")
            check()
            if d.image is not None or d.clone_of is not None:
                source = d.clone_of or image_volume_name(d.image or "")
                path = storage.clone_volume(pool, vol, source, full=d.full_clone,
                                            capacity_mib=d.size_mib, fmt=fmt)
            else:
                assert d.size_mib is not None
                path = storage.create_volume(pool, vol, d.size_mib, fmt=fmt)
            made.append(vol)
            if iscsi:
                check()
                luns.export_lun(hosts.cluster, vol, str(path), must=(target,), report=report)
            placements[name] = luns.placement(hosts.cluster, vol, str(path), fmt)
        if placements != planned:
            # A pool that does not keep its volumes in its directory: design on the
            # paths it gave.
            xml = designer.design_xml(spec, Design(
                host=design.host, disks=placements, networks=design.networks,
                nvram_path=nvram))
        report(f"defining {spec.name}")
        check()
        dom = guest.define(conn, xml)
        if start:
            report(f"starting {spec.name}")
            check()
            dom.start()
        return info_of(target, dom)
    except BaseException:
        if deposed or not still(guard):
            raise
        with ExitStack() as undo:
            undo.enter_context(suppress(AhvliteError))
            if dom is not None:
                dom.destroy()
                dom.undefine()
        # NVRAM is libvirt's to create (at define or first start): its tagged name is ours.
        for vol in [*made, nvram_volume(spec.name, tag)]:
            with suppress(AhvliteError):
                luns.forget_lun(hosts.cluster, vol)
                storage.delete_volume(pool, vol)
        raise


def render_on_host(conn: Connection, cluster: ClusterSpec, host: str, spec_doc: dict[str, Any],
                   nvram_volume: str | None, epoch: int) -> str:
    """The domain XML of a VM kept as its rendered spec (HA's record), for ``host``.

    The spec came from the store, so it is checked like any user input: it must be a
    valid VmSpec, its disks volumes of the shared pool (or files in the places a spec
    may name), its NVRAM a volume of that pool. Raw XML from the store is never used.
    """
    from ahvlite.spec.errors import build

    spec = build(VmSpec, **spec_doc)
    pool = storage.lookup_pool(conn, shared_pool(cluster))
    pool_dir = storage.pool_path(pool)
    check_spec_paths(spec, pool_dir)
    placements: dict[str, DiskPlacement] = {}
    for name, d in zip(spec.disk_names(), spec.disks, strict=True):
        if d.volume is not None:
            found = storage.find_volume(pool, d.volume)
            if found is None:
                # A shared pool learns of volumes other hosts made only on a refresh.
                storage.refresh(pool)
                found = storage.find_volume(pool, d.volume)
            if found is None:
                raise NotFound(f"{spec.name}: volume {d.volume} is not in pool "
                               f"{cluster.shared_pool} on {host}")
            info = storage.volume_info(found)
            placements[name] = luns.placement(
                cluster, d.volume, info.path, "qcow2" if info.format == "qcow2" else "raw",
                cdrom=d.cdrom)
        elif d.path is not None:
            placements[name] = DiskPlacement(d.path, format="raw" if d.cdrom else "qcow2")
        else:
            raise InvalidSpec(f"disks.{name}", d.model_dump(exclude_none=True),
                              "a volume or a file (a rendered spec makes no new disks)")
    nvram = None
    if spec.boot.firmware == "uefi":
        if not nvram_volume or "/" in nvram_volume or nvram_volume in (".", ".."):
            raise InvalidSpec("nvram_volume", nvram_volume, "a volume name of the shared pool")
        nvram = str(pool_dir / nvram_volume)
    return designer.design_xml(spec, Design(
        host=policy_on(conn, cluster, host, cpustore.level_of(cluster)), disks=placements,
        networks=networks_of(cluster, host), nvram_path=nvram, epoch=epoch))


# -- power --------------------------------------------------------------------------

def start_vm(cluster: ClusterSpec, name: str) -> VmInfo:
    with connect(cluster) as hosts:
        host, dom = hosts.find(name)
        dom.mark_power(True)
        dom.start()
        return info_of(host, dom)


def shutdown_vm(cluster: ClusterSpec, name: str, *, timeout_s: float = 60,
                force: bool = False) -> VmInfo:
    """ACPI shutdown; after ``timeout_s`` power off only when ``force``."""
    with connect(cluster) as hosts:
        host, dom = hosts.find(name)
        dom.mark_power(False)  # before: HA must not take it for a lost VM
        dom.shut_down(timeout_s=timeout_s, force=force)
        return info_of(host, dom)


def stop_vm(cluster: ClusterSpec, name: str, *, force: bool) -> VmInfo:
    if not force:
        raise InvalidSpec("force", False, "--force: stop pulls the plug without asking "
                          "the guest", hint="`ahvlite vm shutdown` asks the guest first")
    with connect(cluster) as hosts:
        host, dom = hosts.find(name)
        dom.mark_power(False)  # before: HA must not take it for a lost VM
        dom.destroy()
        return info_of(host, dom)


def reboot_vm(cluster: ClusterSpec, name: str) -> VmInfo:
    with connect(cluster) as hosts:
        host, dom = hosts.find(name)
        dom.reboot()
        return info_of(host, dom)


def delete_vm(cluster: ClusterSpec, name: str, *, force: bool = False) -> dict[str, Any]:
    """Remove the definition, its volumes, NVRAM and TPM state."""
    with connect(cluster) as hosts:
        host, dom = hosts.find(name)
        if dom.state() in guest.ACTIVE_STATES and not force:
            raise Conflict(f"{name} is running on {host}",
                           hint="shut it down first, or pass --force")
        d = dom.config(inactive=True)
        volumes = list((d.meta or VmMeta()).volumes.values())
        nvram = d.os.nvram if d.os is not None else None
        dom.destroy()
        dom.undefine()
        pool = hosts.pool(host)
        for v in volumes:
            luns.forget_lun(cluster, v)  # its targets go before the file (iSCSI disks)
        removed = [v for v in volumes if storage.delete_volume(pool, v)]
        # libvirt removes NVRAM with the definition; it is in the pool only if that failed.
        if nvram and storage.delete_volume(pool, Path(nvram).name):
            removed.append(Path(nvram).name)
        return {"name": name, "host": host, "deleted_volumes": removed}


def console_run(cluster: ClusterSpec, name: str, command: str, *,
                timeout_s: float = 30) -> tuple[int, str]:
    """Run a shell command on the VM's serial console."""
    from ahvlite.virt.console import Console

    with connect(cluster) as hosts:
        host, dom = hosts.find(name)
        with Console(hosts.conn(host), dom) as con:
            return con.run(command, timeout_s=timeout_s)


def drop_leftovers(hosts: Hosts, volumes: list[str], guard: Guard = no_guard) -> list[str]:
    """Delete those of ``volumes`` (what an earlier attempt of a task may have left
    half-made) that no VM on a reachable host uses; returns the ones deleted."""
    if not volumes or not hosts.conns:
        return []
    _, pool = hosts.any_pool()
    used = volumes_in_use(hosts)
    dropped = []
    for vol in volumes:
        if vol not in used:
            guard()
            luns.forget_lun(hosts.cluster, vol)  # an iSCSI volume's target goes first
            if storage.delete_volume(pool, vol):
                dropped.append(vol)
    return dropped


def set_labels(cluster: ClusterSpec, name: str, changes: dict[str, str | None]) -> VmInfo:
    """Set (or with None remove) labels in the VM's metadata, live and persistent."""
    with connect(cluster) as hosts:
        host, dom = hosts.find(name)
        d = dom.config(inactive=True)
        meta = d.meta or d.ensure_meta()
        labels = dict(meta.labels)
        for k, v in changes.items():
            if v is None:
                labels.pop(k, None)
            else:
                labels[k] = v
        meta.labels = labels
        dom.set_metadata(meta)
        return info_of(host, dom)
