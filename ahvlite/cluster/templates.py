"""Versioned VM templates: capture a VM's shape and disks, deploy many copies.

The catalogue is the store's ``templates`` collection, one document per template
(written by compare-and-set: two admins adding versions at once never lose one);
template disks are full copies in the shared pool (``tmpl-NAME-vN-DISK.qcow2``) that
deployed VMs clone by backing file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from ahvlite.cluster import schedulable, vms
from ahvlite.cluster.guard import Guard, no_guard, still
from ahvlite.cluster.state import ClusterState
from ahvlite.errors import AhvliteError, Conflict, InvalidSpec, NotFound
from ahvlite.sched.place import Want, place
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.errors import build
from ahvlite.spec.template import TemplateDisk, TemplateNic, TemplateSpec, TemplateVersion
from ahvlite.spec.vm import BootSpec, DiskSpec, NicSpec, VmSpec, check_name
from ahvlite.virt import designer, guest, seediso, storage
from ahvlite.virt.xml.domain import Domain, VmMeta

TEMPLATE_LABEL = "ahvlite.io/template"
VERSION_LABEL = "ahvlite.io/template-version"
Report = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


COLLECTION = "templates"


def load_template(state: ClusterState, name: str) -> TemplateSpec:
    check_name("template", name)
    raw = state.doc(COLLECTION, name)
    if raw is None:
        raise NotFound(f"no template named {name!r}",
                       hint="`ahvlite template list` shows them; `template create` makes one")
    return build(TemplateSpec, **raw)


def list_templates(state: ClusterState) -> list[TemplateSpec]:
    return [build(TemplateSpec, **raw) for raw in state.docs(COLLECTION).values()]


def template_volume(name: str, version: int, disk: str) -> str:
    return f"tmpl-{name}-v{version}-{disk}.qcow2"


def _disk_names(d: Domain) -> list[tuple[str, Any]]:
    """(name, disk) of each real disk of a domain (CD-ROMs belong to the VM, not its
    shape: seed ISOs)."""
    names = (d.meta or VmMeta()).disk_names
    return [(names.get(x.target_dev or "") or x.serial or "", x)
            for x in (d.devices.disks if d.devices else []) if x.device == "disk"]


def _capture(hosts: vms.Hosts, template: str, version: int, vm: str,
             report: Report, guard: Guard) -> TemplateVersion:
    """Copy ``vm``'s disks into the pool as template volumes; describe the VM."""
    host, dom = hosts.find(vm)
    if dom.state() != "shutoff":
        raise Conflict(f"{vm} is {dom.state()}",
                       hint=f"shut it down first (`ahvlite vm shutdown {vm}`): its disks "
                            "must not change while they are copied")
    d = dom.config(inactive=True)
    meta = d.meta or VmMeta()
    volumes, nets = meta.volumes, meta.nic_networks
    pool = hosts.pool(host)
    disks: list[TemplateDisk] = []
    made: list[str] = []
    try:
        for dname, disk in _disk_names(d):
            source = volumes.get(dname)
            if source is None:
                raise InvalidSpec("vm disk", disk.source_file,
                                  "a disk in the shared pool made by ahvlite")
            target = template_volume(template, version, dname)
            report(f"copying disk {dname} of {vm} to {target}")
            guard()
            storage.clone_volume(pool, target, source, full=True)
            made.append(target)
            disks.append(TemplateDisk(name=dname, bus=disk.target_bus or "scsi",
                                      volume=target))
    except BaseException:
        if still(guard):
            for vol in made:
                storage.delete_volume(pool, vol)
        raise
    nics = []
    networks = vms.networks_of(hosts.cluster, host)
    for iface in (d.devices.interfaces if d.devices else []):
        network = nets.get(iface.mac or "") or iface.source_bridge or "br0"
        net = networks.network(network)
        tags = [t for t in iface.vlan_tags if not (net and t == net.vlan)]
        nics.append(TemplateNic(network=network, mode="trunk" if iface.trunk else "access",
                                trunk_vlans=tuple(tags) if iface.trunk else ()))
    os_ = d.os
    boot = BootSpec(firmware="uefi" if os_ is not None and os_.loader else "bios",
                    secure_boot=bool(os_ is not None and os_.loader_secure),
                    kernel=os_.kernel if os_ is not None else None,
                    initrd=os_.initrd if os_ is not None else None,
                    cmdline=(os_.cmdline or "") if os_ is not None else "")
    return TemplateVersion(
        version=version, from_vm=vm, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        vcpus=d.vcpus or 1, memory_mib=d.memory_mib or 1024, overcommit=bool(meta.overcommit),
        boot=boot, vtpm=bool(d.devices and len(d.devices.tpms)), disks=disks, nics=nics)


def capture(cluster: ClusterSpec, template: str, version: int, vm: str, *,
            report: Report = _quiet, guard: Guard = no_guard) -> TemplateVersion:
    """Version ``version`` of ``template`` from the shut-off VM ``vm``: its disks copied
    into the pool (``tmpl-NAME-vN-DISK.qcow2``), its shape described. ``guard`` runs
    before each copy and raises to stop (then nothing is undone)."""
    check_name("name", template)
    with vms.connect(cluster) as hosts:
        return _capture(hosts, template, version, vm, report, guard)


def drop_capture_leftovers(cluster: ClusterSpec, template: str, version: int, vm: str, *,
                           guard: Guard = no_guard) -> list[str]:
    """Delete the volumes :func:`capture` of ``vm`` as that version would make, where no
    stored template version and no VM refers to them: what an interrupted capture left
    (a task resumed by the next leader; a run after one that died)."""
    referenced = {d.volume for t in list_templates(cluster.state) for v in t.versions
                  for d in v.disks}
    with vms.connect(cluster) as hosts:
        _, dom = hosts.find(vm)
        d = dom.config(inactive=True)
        names = [template_volume(template, version, n) for n, _ in _disk_names(d)]
        return vms.drop_leftovers(hosts, [n for n in names if n not in referenced], guard)


def _same(stored: TemplateVersion, version: TemplateVersion) -> bool:
    return stored.from_vm == version.from_vm and \
        [d.volume for d in stored.disks] == [d.volume for d in version.disks]


def store_version(state: ClusterState, name: str, version: TemplateVersion, *,
                  activate: bool = True) -> TemplateSpec:
    """Store a captured version by compare-and-set: version 1 makes the template, a
    later one is added (the active one unless ``activate`` is off). The same version
    stored already counts as done (a resumed task); another one of that number is a
    Conflict (someone added a version meanwhile)."""
    if version.version == 1:
        spec = TemplateSpec(name=name, active_version=1, versions=[version])
        try:
            state.create_doc(COLLECTION, name, spec.model_dump(mode="json"))
            return spec
        except Conflict:
            now = load_template(state, name)
            if any(v.version == 1 and _same(v, version) for v in now.versions):
                return now
            raise Conflict(f"template {name!r} exists",
                           hint=f"`ahvlite template version add {name} --from-vm "
                                f"{version.from_vm}` adds a version") from None

    def add(doc: dict[str, Any]) -> dict[str, Any] | None:
        now = build(TemplateSpec, **doc)
        for v in now.versions:
            if v.version == version.version:
                if _same(v, version):
                    return None  # stored by an earlier attempt
                raise Conflict(f"template {name} got version {v.version} while this one "
                               "was copied", hint="add the version again")
        if now.next_version() != version.version:
            raise Conflict(f"template {name} got version {now.next_version() - 1} while "
                           "this one was copied", hint="add the version again")
        return now.model_copy(update={
            "versions": [*now.versions, version],
            "active_version": version.version if activate else now.active_version,
        }).model_dump(mode="json")

    return build(TemplateSpec, **state.update_doc(COLLECTION, name, add))


def drop_volumes(cluster: ClusterSpec, version: TemplateVersion) -> None:
    """Delete a captured version's volumes that no stored version refers to (it was
    not stored)."""
    referenced = {d.volume for t in list_templates(cluster.state) for v in t.versions
                  for d in v.disks}
    with vms.connect(cluster) as hosts:
        _, pool = hosts.any_pool()
        for d in version.disks:
            if d.volume not in referenced:
                storage.delete_volume(pool, d.volume)


def set_active(state: ClusterState, name: str, version: int) -> TemplateSpec:
    def activate(doc: dict[str, Any]) -> dict[str, Any]:
        spec = build(TemplateSpec, **doc)
        spec.version(version)  # NotFound when it does not exist
        return spec.model_copy(update={"active_version": version}).model_dump(mode="json")

    load_template(state, name)
    return build(TemplateSpec, **state.update_doc(COLLECTION, name, activate))


def vm_spec_from(template: TemplateSpec, version: TemplateVersion, name: str) -> VmSpec:
    """A VM of ``version``: new uuid, genid and MACs; disks cloned from the template."""
    return build(
        VmSpec, name=name, vcpus=version.vcpus, memory_mib=version.memory_mib,
        overcommit=version.overcommit, boot=version.boot, vtpm=version.vtpm,
        disks=[DiskSpec(name=d.name, bus=d.bus, clone_of=d.volume) for d in version.disks],
        nics=[NicSpec(network=n.network, mode=n.mode, trunk_vlans=n.trunk_vlans)
              for n in version.nics],
        labels={TEMPLATE_LABEL: template.name, VERSION_LABEL: str(version.version)},
    ).with_macs()


MAX_DEPLOY = 500


def plan_deploy(cluster: ClusterSpec, name: str, *, count: int, prefix: str | None = None,
                version: int | None = None, start: bool = True, host: str | None = None,
                uuid_of: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Where each of ``count`` VMs of template ``name`` goes, checked before anything is
    made: names free, networks and images known, hosts open and with room. Plain JSON
    (a task records it): ``{"template", "version", "vms": [{"spec", "host"}]}``; each
    spec has its UUID (``uuid_of(vm name)``, random when None) and MACs."""
    if not 1 <= count <= MAX_DEPLOY:
        raise InvalidSpec("count", count, f"from 1 to {MAX_DEPLOY}")
    template = load_template(cluster.state, name)
    chosen = template.version(version)
    base = prefix if prefix is not None else f"{name}-"
    specs = []
    for i in range(1, count + 1):
        s = vm_spec_from(template, chosen, f"{base}{i}")
        if uuid_of is not None:
            s = s.model_copy(update={"uuid": uuid_of(s.name)})
        specs.append(s)
    with vms.connect(cluster) as hosts:
        for s in specs:
            vms.check_new_vm(hosts, s, host or next(iter(hosts.conns), ""))
        # Hosts in maintenance take no new VMs; named by --host, say so.
        closed = schedulable.closed_hosts(cluster, host)
        capacity = [c for c in vms.capacities(hosts) if c.name not in closed]
    need = chosen.memory_mib
    if chosen.overcommit:
        need = chosen.memory_mib * designer.OVERCOMMIT_START_PERCENT // 100
    pending: dict[str, int] = {}
    planned = []
    for s in specs:
        t = place(capacity, Want(s.name, chosen.memory_mib), requested=host,
                  need_free_mib=need if start else 0, pending_mib=pending)
        pending[t] = pending.get(t, 0) + (need if start else 0)
        planned.append({"spec": s.model_dump(mode="json"), "host": t})
    return {"template": name, "version": chosen.version, "vms": planned}


def deploy_vm(hosts: vms.Hosts, target: str, spec: VmSpec, *, tag: str,
              earlier_tags: Sequence[str] = (), user_data: str | None = None,
              start: bool = True, admit: Callable[[VmSpec, str], None] | None = None,
              guard: Guard = no_guard) -> vms.VmInfo:
    """Make one planned VM on ``target``: its NoCloud seed ISO (VMs with disks), its
    disks cloned, defined, started after ``admit(spec, target)`` (HA admission) passes.
    On failure all of this one VM is undone (while ``guard`` passes), nothing else.

    A VM with the spec's UUID counts as made (an earlier attempt of the task made it;
    it is started if asked). Otherwise what earlier attempts left (their ``tag``s, on
    volumes no VM uses) is deleted first."""
    for h, conn in hosts.conns.items():
        dom = guest.find_by_uuid(conn, spec.uuid)
        if dom is not None:
            if start and dom.state() not in guest.ACTIVE_STATES:
                if admit is not None:
                    admit(spec, h)
                guard()
                dom.start()
            return vms.info_of(h, dom)
    vms.drop_leftovers(hosts, [v for t in earlier_tags for v in
                               (*vms.tagged_volumes(spec, t), vms.seed_volume(spec.name, t))],
                       guard)
    if start and admit is not None:
        admit(spec, target)
    seed = None
    if spec.disks:
        seed = vms.seed_volume(spec.name, tag)
        spec = spec.model_copy(update={"disks": [
            *spec.disks, DiskSpec(name="seed", bus="sata", cdrom=True, volume=seed)]})
    try:
        if seed is not None:
            data = seediso.nocloud_seed(instance_id=spec.uuid, hostname=spec.name,
                                        user_data=user_data)
            guard()
            storage.upload_bytes(hosts.conn(target), hosts.pool(target), seed, data)
        return vms.create_on_host(hosts, target, spec, start=start, report=_quiet, tag=tag,
                                  guard=guard)
    except BaseException:
        if seed is not None and still(guard):
            with suppress(AhvliteError):
                storage.delete_volume(hosts.pool(target), seed)
        raise
