"""VM task kinds: lifecycle, create from a full spec, settings, disks and NICs, the
serial console, live migration."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Literal

from pydantic import Field, model_validator

from ahvlite.controller.kinds.base import OPTIONAL_HOST, Kind, Params, attempt_tag
from ahvlite.controller.tasks import TaskContext
from ahvlite.errors import InvalidSpec, NotFound
from ahvlite.spec.cluster import NAME
from ahvlite.spec.vm import NAME_RE, VmSpec

# Domain UUIDs derive from the task id: re-running a step finds "its" VM, not a twin.
VM_UUID_NAMESPACE = uuid.UUID("5b0f3c2e-8a43-4c36-9d8e-6a1a3c0f7e21")
VM_NAME = Field(pattern=NAME_RE.pattern, description="a VM name")
LIFECYCLE_ACTIONS = ("start", "shutdown", "stop", "reboot", "delete")
MAX_CONSOLE_OUTPUT = 64 * 1024  # characters of a console command's output kept
PROGRESS_EVERY_S = 1.0  # a migration's progress reaches the store at most this often
ABORTED_STEP = "aborted"  # vm.migrate: the result of a migration the policy gave up


def _ha_admit(cluster: Any, name: str, **new_vm: Any) -> str | None:
    """HA admission (guarantee mode) for a power-on: the host to use, or Conflict with
    the missing memory."""
    from ahvlite.controller.ha.inventory import check_power_on

    return check_power_on(cluster, name, **new_vm)


def _earlier_tags(ctx: TaskContext) -> list[str]:
    """The volume tags of this task's earlier attempts (a dead leader's)."""
    return [attempt_tag(ctx.task.id, k) for k in range(1, ctx.task.attempts)]


class LifecycleParams(Params):
    action: Literal["start", "shutdown", "stop", "reboot", "delete"]
    name: str = VM_NAME
    force: bool = False
    timeout_s: float = Field(60, ge=0, le=3600)

    @model_validator(mode="after")
    def _stop_is_forced(self) -> LifecycleParams:
        if self.action == "stop" and not self.force:
            raise InvalidSpec("force", False, "true: stop pulls the plug without asking "
                              "the guest", hint="use action shutdown to ask the guest first")
        return self


class VmLifecycle(Kind[LifecycleParams]):
    """``vm.lifecycle``: start, shutdown, stop (forced), reboot or delete one VM.

    Each action is one step that is safe to repeat: start on a running VM, shutdown or
    stop on a stopped one do nothing; delete of a VM already gone counts as done when
    an earlier attempt (a dead leader's) may have deleted it.
    """

    name = "vm.lifecycle"
    Params = LifecycleParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import vms

        p = self.params(ctx)
        cspec = self.cluster()
        name, action = p.name, p.action

        def act() -> dict[str, Any]:
            if action == "start":
                return vms.start_vm(cspec, name).to_dict()
            if action == "shutdown":
                return vms.shutdown_vm(cspec, name, timeout_s=p.timeout_s,
                                       force=p.force).to_dict()
            if action == "stop":
                return vms.stop_vm(cspec, name, force=True).to_dict()
            if action == "reboot":
                return vms.reboot_vm(cspec, name).to_dict()
            try:
                return vms.delete_vm(cspec, name, force=p.force)
            except NotFound:
                if ctx.task.attempts > 1:  # an earlier attempt may have deleted it
                    return {"name": name, "host": None, "deleted_volumes": [],
                            "note": "already gone"}
                raise

        if action == "start":
            # HA admission here too, not only in the CLI: a task may come from anywhere.
            _ha_admit(cspec, name)
        held = None
        if action == "delete":
            # Which addresses to free, recorded before the VM goes: a resumed attempt
            # that finds the VM gone still frees them.
            held = ctx.step("ipam-nics", lambda: _nics_of(cspec, name))
        ctx.progress(10, f"{action} {name}")
        out = dict(ctx.step(action, act))
        if held:
            out["released"] = ctx.step("release", lambda: _release(ctx, cspec, held))
        return out


def _nics_of(cluster: Any, name: str) -> dict[str, Any] | None:
    """The VM's UUID and its (MAC, network) pairs on managed networks (None: no VM)."""
    from ahvlite.cluster import ipam, vms

    if not any(n.ipam is not None for n in cluster.network.networks):
        return None  # no managed network, no allocation to free
    try:
        info = vms.show_vm(cluster, name)
    except NotFound:
        return None
    return {"uuid": info.uuid, "nics": ipam.managed_pairs(
        cluster.network, [(n.get("mac"), n.get("network")) for n in info.nics])}


def _release(ctx: TaskContext, cluster: Any, held: Any) -> dict[str, str]:
    """Free the addresses a recorded :func:`_nics_of` names (checked: a task record is
    outside input)."""
    from ahvlite.cluster import ipam

    if not isinstance(held, dict) or not isinstance(held.get("nics"), list):
        return {}
    pairs = [(m, n) for m, n in (p for p in held["nics"]
                                 if isinstance(p, list | tuple) and len(p) == 2)
             if isinstance(m, str) and isinstance(n, str)]
    uuid_ = held.get("uuid")
    if not pairs or not isinstance(uuid_, str):
        return {}  # only ever what this VM holds
    ctx.check_leader()
    return ipam.release(cluster.state.store, pairs, uuid_, now=ctx.clock.time())


class SpecCreateParams(Params):
    spec: dict[str, Any]
    host: str | None = OPTIONAL_HOST
    start: bool = False

    @model_validator(mode="after")
    def _spec(self) -> SpecCreateParams:
        from ahvlite.spec.errors import build

        build(VmSpec, **self.spec)  # a bad spec is refused at once, its field named
        return self


class VmSpecCreate(Kind[SpecCreateParams]):
    """``vm.spec.create``: a full :class:`VmSpec` (JSON) placed, made and maybe started.

    The VM's UUID is the spec's, or derives from the task id: a re-run finds the VM an
    earlier attempt made by UUID and counts it as done (starting it if asked), so a
    leader dying mid-create never leaves a twin.
    """

    name = "vm.spec.create"
    Params = SpecCreateParams

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        out = super().validate(params)
        from ahvlite.spec.errors import build

        raw = out["spec"]
        dumped = build(VmSpec, **raw).model_dump(mode="json")
        if raw.get("uuid") is None:
            del dumped["uuid"]  # derived from the task id when it runs
        out["spec"] = dumped
        return out

    def check(self, p: SpecCreateParams) -> None:
        from ahvlite.cluster.ipamplan import wants_of

        self.host("host", p.host)
        spec = VmSpec(**p.spec).with_macs()
        wants_of(self.cluster().network, spec.name, spec.uuid, spec.nics)  # ip=, trunks

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import ipam, vms

        p = self.params(ctx)
        # The MACs are chosen once and recorded: a resumed attempt must ask IPAM for the
        # same NICs, or the first attempt's addresses would be held by nothing.
        spec = VmSpec(**ctx.step("spec", lambda: VmSpec(**{
            "uuid": str(uuid.uuid5(VM_UUID_NAMESPACE, ctx.task.id)), **p.spec})
            .with_macs().model_dump(mode="json")))
        cspec = self.cluster()

        def allocate() -> dict[str, str]:
            ctx.check_leader()
            return ipam.allocate_vms(cspec, [spec], by=ctx.task.id,
                                     now=lambda: ctx.clock.time())

        addresses = ctx.step("addresses", allocate)
        host = p.host
        self.host("host", host)  # the cluster may have changed since
        # One connection per host for the whole task: admission, the look for an
        # earlier attempt's VM, placement and the create all read through it.
        with vms.connect(cspec) as hosts:
            if p.start and ctx.task.attempts == 1:
                # A resumed attempt may find its VM already running; admission then
                # would count it twice. The first attempt checked before anything was made.
                host = _ha_admit(cspec, spec.name, memory_mib=spec.memory_mib, host=host,
                                 labels=spec.labels, hosts=hosts) or host
            ctx.progress(10, f"creating {spec.name}")
            with _released_on_failure(ctx, cspec, spec, addresses):
                info = ctx.step("create", lambda: create_once(
                    cspec, spec, host=host, start=p.start, task_id=ctx.task.id,
                    attempt=ctx.task.attempts, guard=ctx.check_leader, hosts=hosts))
        return with_addresses(dict(info), addresses)


def with_addresses(info: dict[str, Any], addresses: dict[str, str]) -> dict[str, Any]:
    """A VM's info with the addresses IPAM gave its NICs (in ``ips`` and per NIC)."""
    for nic in info.get("nics") or []:
        ip = addresses.get(str(nic.get("mac") or "").lower())
        if ip is not None:
            nic["ip"] = ip
            if ip not in info.setdefault("ips", []):
                info["ips"].append(ip)
    return info


@contextmanager
def _released_on_failure(ctx: TaskContext, cluster: Any, spec: VmSpec | None,
                         addresses: dict[str, str]) -> Iterator[None]:
    """Free ``spec``'s addresses when the block fails (the VM was undone), unless
    leadership was lost: then the next leader resumes with them."""
    from ahvlite.cluster import ipam
    from ahvlite.controller.coord.api import NotLeader
    from ahvlite.errors import AhvliteError

    try:
        yield
    except AhvliteError as exc:
        if spec is not None and addresses and not isinstance(exc, NotLeader):
            with suppress(AhvliteError):
                ctx.check_leader()
                ipam.release_vm(cluster, spec, now=lambda: ctx.clock.time())
        raise


def create_once(cluster: Any, spec: Any, *, host: str | None, start: bool, task_id: str,
                attempt: int, guard: Callable[[], object] = lambda: None,
                hosts: Any = None) -> dict[str, Any]:
    """Create ``spec`` unless a VM with its UUID exists (then only start it if asked).

    The volumes carry this attempt's tag. On a resumed attempt, the volumes an earlier
    attempt of this task made (its tag) that no VM uses are what that attempt left
    half-made: they go before the create is tried again; nothing else is touched.
    ``hosts``: the task's connections (``cluster.vms.connect``); opened here without.
    """
    from ahvlite.cluster import vms
    from ahvlite.virt import guest

    if hosts is None:
        with vms.connect(cluster) as opened:
            return create_once(cluster, spec, host=host, start=start, task_id=task_id,
                               attempt=attempt, guard=guard, hosts=opened)
    if attempt > 1 and hosts.errors:
        from ahvlite.errors import HostUnreachable

        # The dead attempt's VM may sit on the silent host: creating now could twin it.
        raise HostUnreachable("cannot rule out a VM made by the earlier attempt: "
                              + "; ".join(f"{h}: {e}" for h, e in hosts.errors.items()))
    for h, conn in hosts.conns.items():
        dom = guest.find_by_uuid(conn, spec.uuid)
        if dom is not None:
            if start:
                guard()
                dom.start()
            return vms.info_of(h, dom).to_dict()
    earlier = [attempt_tag(task_id, k) for k in range(1, attempt)]
    vms.drop_leftovers(hosts, [v for tag in earlier for v in vms.tagged_volumes(spec, tag)],
                       guard)
    return vms.create_vm(cluster, spec, host=host, start=start,
                         tag=attempt_tag(task_id, attempt), guard=guard,
                         hosts=hosts).to_dict()


# -- settings -----------------------------------------------------------------------

class UpdateParams(Params):
    name: str = VM_NAME
    labels: dict[str, str | None] = Field(
        default_factory=dict, description="labels to set; a null value removes the label")
    ha_priority: int | None = Field(None, ge=-1000, le=1000,
                                    description="HA restart priority (higher first)")

    @model_validator(mode="after")
    def _changes(self) -> UpdateParams:
        from ahvlite.spec.labels import HA_PRIORITY_LABEL
        from ahvlite.spec.text import check_text

        if not self.labels and self.ha_priority is None:
            raise InvalidSpec("labels", {}, "at least one change (labels or ha_priority)")
        for key, value in self.labels.items():
            check_text("labels (key)", key)
            if not key:
                raise InvalidSpec("labels (key)", key, "a non-empty key")
            if value is not None:
                check_text(f"labels.{key}", value)
        if self.ha_priority is not None and HA_PRIORITY_LABEL in self.labels:
            raise InvalidSpec(f"labels.{HA_PRIORITY_LABEL}", self.labels[HA_PRIORITY_LABEL],
                              "unset when ha_priority is given (it sets that label)")
        return self


class VmUpdate(Kind[UpdateParams]):
    """``vm.update``: labels and HA priority in the VM's metadata (live and persistent).

    Setting labels is the same whether done once or twice: a resumed run does it again.
    """

    name = "vm.update"
    Params = UpdateParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import vms
        from ahvlite.spec.labels import HA_PRIORITY_LABEL

        p = self.params(ctx)
        changes = dict(p.labels)
        if p.ha_priority is not None:
            changes[HA_PRIORITY_LABEL] = str(p.ha_priority)
        cspec = self.cluster()
        ctx.progress(10, f"updating {p.name}")
        return dict(ctx.step("update", lambda: vms.set_labels(cspec, p.name,
                                                             changes).to_dict()))


# -- disks and NICs -----------------------------------------------------------------

class DiskAddParams(Params):
    name: str = VM_NAME
    disk: dict[str, Any] = Field(description="a DiskSpec: size_mib or image, bus, "
                                             "full_clone, name")

    @model_validator(mode="after")
    def _disk(self) -> DiskAddParams:
        from ahvlite.spec.errors import build
        from ahvlite.spec.vm import DiskSpec

        d = build(DiskSpec, **self.disk)
        if d.path is not None or d.volume is not None or d.clone_of is not None or d.cdrom:
            raise InvalidSpec("disk", self.disk, "a new disk: size_mib or image (with bus, "
                              "full_clone, name)")
        return self


class VmDiskAdd(Kind[DiskAddParams]):
    """``vm.disk.add``: a new disk (empty, or a clone of an image), hot-plugged when the
    VM runs.

    The disk's name is chosen once and recorded. A resumed run whose VM already has a
    disk of that name counts as done; otherwise it deletes the volume an earlier attempt
    made for it (its tag) if no VM uses it, and adds the disk again.
    """

    name = "vm.disk.add"
    Params = DiskAddParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import vmdevices, vms
        from ahvlite.spec.vm import DiskSpec

        p = self.params(ctx)
        cspec = self.cluster()
        disk = DiskSpec(**p.disk)
        disk_name = ctx.step("name", lambda: vmdevices.free_disk_name(cspec, p.name, disk.name))
        disk = disk.model_copy(update={"name": disk_name})
        ctx.progress(10, f"adding disk {disk_name} to {p.name}")

        def add() -> dict[str, Any]:
            if ctx.task.attempts > 1:
                info = vms.show_vm(cspec, p.name)
                if any(d["name"] == disk_name for d in info.disks):
                    return info.to_dict()  # the earlier attempt attached it
                with vms.connect(cspec) as hosts:
                    vms.drop_leftovers(hosts, [v for t in _earlier_tags(ctx)
                                               for v in vms.disk_volumes(p.name, disk_name, t)],
                                       ctx.check_leader)
            return vmdevices.add_disk(cspec, p.name, disk,
                                      tag=attempt_tag(ctx.task.id, ctx.task.attempts),
                                      guard=ctx.check_leader).to_dict()

        return dict(ctx.step("add", add))


class NicAddParams(Params):
    name: str = VM_NAME
    nic: dict[str, Any] = Field(description="a NicSpec: network, mode, trunk_vlans, mac")

    @model_validator(mode="after")
    def _nic(self) -> NicAddParams:
        from ahvlite.spec.errors import build
        from ahvlite.spec.vm import NicSpec

        build(NicSpec, **self.nic)
        return self


class VmNicAdd(Kind[NicAddParams]):
    """``vm.nic.add``: a NIC on a network, hot-plugged when the VM runs.

    Its MAC (given, or chosen once and recorded) identifies it: a resumed run whose VM
    already has a NIC with that MAC counts as done."""

    name = "vm.nic.add"
    Params = NicAddParams

    def check(self, p: NicAddParams) -> None:
        from ahvlite.cluster.ipamplan import wants_of
        from ahvlite.spec.vm import NicSpec, random_mac

        nic = NicSpec(**p.nic)
        wants_of(self.cluster().network, p.name, "",
                 [nic.model_copy(update={"mac": nic.mac or random_mac()})])

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import ipam, vmdevices, vms
        from ahvlite.spec.vm import NicSpec, random_mac

        p = self.params(ctx)
        cspec = self.cluster()
        nic = NicSpec(**p.nic)
        mac = ctx.step("mac", lambda: nic.mac or random_mac())
        nic = nic.model_copy(update={"mac": mac})
        net = cspec.network.network(nic.network)
        one, addresses = None, {}
        if net is not None and net.ipam is not None:
            # The VM's UUID tells a resumed attempt's allocation from another VM's.
            vm_uuid = ctx.step("uuid", lambda: vms.show_vm(cspec, p.name).uuid)
            one = VmSpec(name=p.name, uuid=vm_uuid, memory_mib=64, nics=[nic])

            def allocate() -> dict[str, str]:
                ctx.check_leader()
                return ipam.allocate_vms(cspec, [one], by=ctx.task.id,
                                         now=lambda: ctx.clock.time())

            addresses = ctx.step("address", allocate)
        ctx.progress(10, f"adding NIC {mac} on {nic.network} to {p.name}")

        def add() -> dict[str, Any]:
            if ctx.task.attempts > 1:
                info = vms.show_vm(cspec, p.name)
                if any((n["mac"] or "").lower() == mac for n in info.nics):
                    return info.to_dict()
            ctx.check_leader()
            return vmdevices.add_nic(cspec, p.name, nic).to_dict()

        with _released_on_failure(ctx, cspec, one, addresses):
            return with_addresses(dict(ctx.step("add", add)), addresses)


class NicRemoveParams(Params):
    name: str = VM_NAME
    mac: str = Field(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$",
                     description="the NIC's MAC")


class VmNicRemove(Kind[NicRemoveParams]):
    """``vm.nic.remove``: unplug and remove the NIC with this MAC. A resumed run that
    finds no such NIC counts as done (the earlier attempt removed it)."""

    name = "vm.nic.remove"
    Params = NicRemoveParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import vmdevices, vms

        p = self.params(ctx)
        cspec = self.cluster()
        ctx.progress(10, f"removing NIC {p.mac} from {p.name}")

        def held() -> dict[str, Any] | None:
            found = _nics_of(cspec, p.name)
            if found is not None:
                found["nics"] = [[m, n] for m, n in found["nics"] if m == p.mac.lower()]
            return found

        # Recorded before the NIC goes: a resumed attempt knows which address to free.
        nics = ctx.step("ipam-nics", held)

        def remove() -> dict[str, Any]:
            if ctx.task.attempts > 1:
                info = vms.show_vm(cspec, p.name)
                if not any((n["mac"] or "").lower() == p.mac.lower() for n in info.nics):
                    return info.to_dict()
            ctx.check_leader()
            return vmdevices.remove_nic(cspec, p.name, p.mac).to_dict()

        out = dict(ctx.step("remove", remove))
        if nics and nics.get("nics"):
            out["released"] = ctx.step("release", lambda: _release(ctx, cspec, nics))
        return out


# -- the serial console -------------------------------------------------------------

class ConsoleRunParams(Params):
    name: str = VM_NAME
    command: str = Field(min_length=1, max_length=4096,
                         description="one shell command line for the guest")
    timeout_s: float = Field(30, gt=0, le=3600)

    @model_validator(mode="after")
    def _one_line(self) -> ConsoleRunParams:
        from ahvlite.spec.text import check_text

        # One line of plain text: a newline would run a second command unseen, and
        # control characters would drive the guest's terminal.
        check_text("command", self.command)
        return self


class VmConsoleRun(Kind[ConsoleRunParams]):
    """``vm.console.run``: run one shell command on the VM's serial console and return
    its exit status and output (the last 64 KiB).

    Not resumable: the guest may have run the command already, and running it twice is
    not the same as once; a new leader marks the task failed instead."""

    name = "vm.console.run"
    resumable = False
    Params = ConsoleRunParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import vms

        p = self.params(ctx)
        cspec = self.cluster()
        ctx.progress(10, f"running a command on {p.name}'s console")

        def run() -> dict[str, Any]:
            status, output = vms.console_run(cspec, p.name, p.command, timeout_s=p.timeout_s)
            return {"name": p.name, "exit_status": status,
                    "output": output[-MAX_CONSOLE_OUTPUT:],
                    "truncated": len(output) > MAX_CONSOLE_OUTPUT}

        return dict(ctx.step("run", run))


# -- live migration -----------------------------------------------------------------

class MigrateParams(Params):
    name: str = VM_NAME
    # Required, null allowed: a submitter says "the best host" (null) explicitly.
    to: str | None = Field(pattern=NAME, description="the destination host, or null: the "
                                                     "host with most room that passes the checks")
    max_downtime_ms: int = Field(300, ge=1, le=60_000,
                                 description="the longest pause the guest may see")
    bandwidth_mib_s: int | None = Field(None, ge=1, description="stream limit, MiB/s")
    postcopy: bool = False
    max_iterations: int = Field(50, ge=1, le=100_000)
    timeout_s: float = Field(600, gt=0, le=86_400)
    auto_converge: bool = True

    def settings(self) -> Any:
        from ahvlite.cluster.convergence import ConvergenceSettings

        return ConvergenceSettings(
            max_downtime_ms=self.max_downtime_ms, bandwidth_mib_s=self.bandwidth_mib_s,
            postcopy=self.postcopy, max_iterations=self.max_iterations,
            timeout_s=self.timeout_s, auto_converge=self.auto_converge)


def progress_line(p: Any) -> tuple[int, str]:
    """A migration poll as (percent copied, one line: what is left, the dirty rate, the
    iteration, the expected pause against the cap), for the task's progress."""
    mib = 1024 * 1024

    def m(n: int | None) -> str:
        return "?" if n is None else f"{n / mib:.1f}"

    total = p.data_total_bytes or 0
    done = total - (p.data_remaining_bytes or 0)
    pct = min(99, max(1, done * 100 // total)) if total else 1
    notes = [n for n, on in (("stalled", p.stalled), (f"throttle {p.throttle_pct}%",
                                                      p.throttle_pct > 0),
                             ("post-copy", p.postcopy)) if on]
    downtime = "?" if p.expected_downtime_ms is None else p.expected_downtime_ms
    return pct, (f"{p.vm} {p.source}→{p.destination}: iter {p.iteration}, left "
                 f"{m(p.data_remaining_bytes)} MiB, dirty {m(p.dirty_rate_bytes_s)} MiB/s, "
                 f"downtime ~{downtime}/{p.max_downtime_ms} ms"
                 + (f" ({', '.join(notes)})" if notes else ""))


class VmMigrate(Kind[MigrateParams]):
    """``vm.migrate``: live-migrate one VM to ``to`` (or the best host), steered by the
    convergence settings; ADS submits its moves as these. HA admission (guarantee mode)
    checks the move on the leader before the job starts.

    A migration the policy gave up (the VM stays on its source) fails the task; its
    result (how far it got) is recorded as the step ``aborted``.

    The VM's host when the task began is recorded first. A resumed attempt whose VM
    runs elsewhere now counts as done: the dead leader's migration finished (each VM
    moves once). Otherwise the VM is still on its source (libvirt aborts a p2p job
    whose client went away) and the migration is tried again."""

    name = "vm.migrate"
    Params = MigrateParams

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        # Settings left at their defaults are not stored: a task names what was asked
        # (the moves ADS submits stay {name, to}); validating again changes nothing.
        return self.Params.model_validate(super().validate(params)).model_dump(
            mode="json", exclude_defaults=True)

    def check(self, p: MigrateParams) -> None:
        self.host("to", p.to)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import vms
        from ahvlite.cluster.migrate import MigrationAborted, migrate_vm
        from ahvlite.controller.ha.inventory import check_moves

        p = self.params(ctx)
        cspec = self.cluster()
        self.host("to", p.to)
        last = [0.0, -1]  # when progress was last written, and its iteration

        def on_progress(prog: Any) -> None:
            now = ctx.clock.monotonic()
            if now - last[0] < PROGRESS_EVERY_S and prog.iteration == last[1]:
                return
            last[0], last[1] = now, prog.iteration
            ctx.progress(*progress_line(prog))  # raises NotLeader: the job is aborted

        def admit(vm: str, dest: str) -> None:
            check_moves(cspec, [(vm, dest)])
            ctx.check_leader()

        source = ctx.step("source", lambda: vms.show_vm(cspec, p.name).host)

        def act() -> dict[str, Any]:
            if ctx.task.attempts > 1:
                now = vms.show_vm(cspec, p.name).host
                if now != source:
                    return {"vm": p.name, "source": source, "destination": now,
                            "note": "moved by an earlier attempt of this task"}
            return migrate_vm(cspec, p.name, to=p.to, settings=p.settings(),
                              on_progress=on_progress, admit=admit).to_dict()

        ctx.progress(1, f"migrating {p.name} from {source}" + (f" to {p.to}" if p.to else ""))
        try:
            return dict(ctx.step("migrate", act))
        except MigrationAborted as exc:
            # How far it got (iterations, data, downtime tried), for whoever follows it.
            result = exc.result.to_dict()
            ctx.step(ABORTED_STEP, lambda: result)
            raise


KINDS: tuple[type[Kind[Any]], ...] = (VmLifecycle, VmSpecCreate, VmUpdate, VmDiskAdd,
                                      VmNicAdd, VmNicRemove, VmConsoleRun, VmMigrate)
