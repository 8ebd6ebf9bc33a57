"""Versioned VM templates: capture a VM's shape and disks, deploy many copies.

The catalogue is the store's ``templates`` collection, one document per template
(written by compare-and-set: two admins adding versions at once never lose one);
template disks are full copies in the shared pool (``tmpl-NAME-vN-DISK.qcow2``) that
deployed VMs clone by backing file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ahvlite.cluster import schedulable, vms
from ahvlite.cluster.inventory import parallel
from ahvlite.cluster.placement import place
from ahvlite.cluster.state import ClusterState
from ahvlite.errors import AhvliteError, Conflict, InvalidSpec, NotFound, OperationFailed
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.errors import build
from ahvlite.spec.template import TemplateDisk, TemplateNic, TemplateSpec, TemplateVersion
from ahvlite.spec.vm import BootSpec, DiskSpec, NicSpec, VmSpec, check_name
from ahvlite.virt import designer, domains, seediso, storage
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


def _capture(hosts: vms.Hosts, template: str, version: int, vm: str,
             report: Report) -> TemplateVersion:
    """Copy ``vm``'s disks into the pool as template volumes; describe the VM."""
    host, dom = hosts.find(vm)
    if domains.domain_state(dom) != "shutoff":
        raise Conflict(f"{vm} is {domains.domain_state(dom)}",
                       hint=f"shut it down first (`ahvlite vm shutdown {vm}`): its disks "
                            "must not change while they are copied")
    d = Domain.parse(domains.domain_xml(dom, inactive=True))
    meta = d.meta or VmMeta()
    names, volumes, nets = meta.disk_names, meta.volumes, meta.nic_networks
    pool = hosts.pool(host)
    disks: list[TemplateDisk] = []
    made: list[str] = []
    try:
        for disk in (d.devices.disks if d.devices else []):
            if disk.device != "disk":
                continue  # CD-ROMs (seed ISOs) belong to the VM, not its shape
            dname = names.get(disk.target_dev or "") or disk.serial or ""
            source = volumes.get(dname)
            if source is None:
                raise InvalidSpec("vm disk", disk.source_file,
                                  "a disk in the shared pool made by ahvlite")
            target = template_volume(template, version, dname)
            report(f"copying disk {dname} of {vm} to {target}")
            storage.clone_volume(pool, target, source, full=True)
            made.append(target)
            disks.append(TemplateDisk(name=dname, bus=disk.target_bus or "scsi",
                                      volume=target))
    except BaseException:
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


def create_template(cluster: ClusterSpec, name: str, vm: str, *,
                    report: Report = _quiet) -> TemplateSpec:
    check_name("name", name)
    state = cluster.state
    if state.doc(COLLECTION, name) is not None:
        raise Conflict(f"template {name!r} exists",
                       hint=f"`ahvlite template version add {name} --from-vm {vm}` adds a "
                            "version")
    with vms.connect(cluster) as hosts:
        version = _capture(hosts, name, 1, vm, report)
    spec = TemplateSpec(name=name, active_version=1, versions=[version])
    try:
        state.create_doc(COLLECTION, name, spec.model_dump(mode="json"))
    except Conflict:
        _drop_volumes(cluster, version)  # made at the same moment by someone else
        raise
    return spec


def _drop_volumes(cluster: ClusterSpec, version: TemplateVersion) -> None:
    with vms.connect(cluster) as hosts:
        _, pool = hosts.any_pool()
        for d in version.disks:
            storage.delete_volume(pool, d.volume)


def add_version(cluster: ClusterSpec, name: str, vm: str, *,
                activate: bool = True, report: Report = _quiet) -> TemplateSpec:
    """A new version from ``vm``; it becomes the active one unless ``activate`` is off.
    Old versions stay deployable."""
    state = cluster.state
    spec = load_template(state, name)
    number = spec.next_version()
    with vms.connect(cluster) as hosts:
        version = _capture(hosts, name, number, vm, report)

    def add(doc: dict[str, Any]) -> dict[str, Any]:
        now = build(TemplateSpec, **doc)
        if now.next_version() != number:  # another version was added meanwhile
            raise Conflict(f"template {name} got version {now.next_version() - 1} while "
                           f"this one was copied", hint="add the version again")
        return now.model_copy(update={"versions": [*now.versions, version],
                                      "active_version": number if activate
                                      else now.active_version}).model_dump(mode="json")

    try:
        return build(TemplateSpec, **state.update_doc(COLLECTION, name, add))
    except Conflict:
        _drop_volumes(cluster, version)
        raise


def set_active(state: ClusterState, name: str, version: int) -> TemplateSpec:
    def activate(doc: dict[str, Any]) -> dict[str, Any]:
        spec = build(TemplateSpec, **doc)
        spec.version(version)  # NotFound when it does not exist
        return spec.model_copy(update={"active_version": version}).model_dump(mode="json")

    load_template(state, name)
    return build(TemplateSpec, **state.update_doc(COLLECTION, name, activate))


@dataclass(frozen=True)
class Deployed:
    vms: list[vms.VmInfo]
    failed: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"vms": [v.to_dict() for v in self.vms], "failed": self.failed}


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


def deploy(cluster: ClusterSpec, name: str, *, count: int,
           prefix: str | None = None, version: int | None = None,
           user_data: str | None = None, start: bool = True, host: str | None = None,
           report: Report = _quiet) -> Deployed:
    """``count`` VMs from template ``name``, placed across the hosts, made in parallel.

    Each VM that fails is undone on its own; the others stay, and the failures are
    reported by name.
    """
    if not 1 <= count <= 500:
        raise InvalidSpec("count", count, "from 1 to 500")
    template = load_template(cluster.state, name)
    chosen = template.version(version)
    base = prefix if prefix is not None else f"{name}-"
    specs = [vm_spec_from(template, chosen, f"{base}{i}") for i in range(1, count + 1)]
    tags = {s.name: vms.new_tag() for s in specs}  # each VM's volumes, its seed included
    for s in specs:
        if s.disks:
            seed = DiskSpec(name="seed", bus="sata", cdrom=True,
                            volume=vms.seed_volume(s.name, tags[s.name]))
            specs[specs.index(s)] = s.model_copy(update={"disks": [*s.disks, seed]})
    with vms.connect(cluster) as hosts:
        # Everything that can be wrong with the batch, before anything is made.
        seed_vols = {s.name: s.disks[-1].volume for s in specs if s.disks}
        for s in specs:
            no_seed = s.model_copy(update={"disks": [d for d in s.disks if not d.cdrom]})
            vms.check_new_vm(hosts, no_seed, host or next(iter(hosts.conns), ""))
        # Hosts in maintenance take no new VMs; named by --host, say so.
        closed = schedulable.closed_hosts(cluster, host)
        capacity = [c for c in vms.capacities(hosts) if c.name not in closed]
        need = chosen.memory_mib
        if chosen.overcommit:
            need = chosen.memory_mib * designer.OVERCOMMIT_START_PERCENT // 100
        pending: dict[str, int] = {}
        targets: dict[str, str] = {}
        for s in specs:
            t = place(capacity, chosen.memory_mib, requested=host,
                      need_free_mib=need if start else 0, pending_mib=pending)
            targets[s.name] = t
            pending[t] = pending.get(t, 0) + (need if start else 0)
        report(f"deploying {count} VMs of {name} v{chosen.version}: "
               + ", ".join(f"{n}->{h}" for n, h in targets.items()))

        def one(s: VmSpec) -> vms.VmInfo | str:
            target = targets[s.name]
            vol = seed_vols.get(s.name)
            try:
                if vol:
                    data = seediso.nocloud_seed(instance_id=s.uuid, hostname=s.name,
                                                user_data=user_data)
                    storage.upload_bytes(hosts.conn(target), hosts.pool(target), vol, data)
                return vms.create_on_host(hosts, target, s, start=start, report=report,
                                          tag=tags[s.name])
            except AhvliteError as exc:
                if vol:
                    try:
                        storage.delete_volume(hosts.pool(target), vol)
                    except AhvliteError:
                        pass
                return exc.message

        results = parallel(one, specs, workers=8)
    made = [r for r in results if isinstance(r, vms.VmInfo)]
    failed = {s.name: r for s, r in zip(specs, results, strict=True) if isinstance(r, str)}
    if not made and failed:
        first = next(iter(failed.items()))
        raise OperationFailed(f"no VM of {name} was deployed; {first[0]}: {first[1]}")
    return Deployed(made, failed)
