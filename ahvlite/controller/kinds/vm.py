"""VM task kinds: lifecycle, create from a full spec, live migration."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, model_validator

from ahvlite.controller.kinds.base import HOST_FIELD, OPTIONAL_HOST, Kind, Params, attempt_tag
from ahvlite.controller.tasks import TaskContext
from ahvlite.errors import InvalidSpec, NotFound
from ahvlite.spec.vm import NAME_RE, VmSpec

# Domain UUIDs derive from the task id: re-running a step finds "its" VM, not a twin.
VM_UUID_NAMESPACE = uuid.UUID("5b0f3c2e-8a43-4c36-9d8e-6a1a3c0f7e21")
VM_NAME = Field(pattern=NAME_RE.pattern, description="a VM name")
LIFECYCLE_ACTIONS = ("start", "shutdown", "stop", "reboot", "delete")


def _ha_admit(cluster: Any, name: str, **new_vm: Any) -> str | None:
    """HA admission (guarantee mode) for a power-on: the host to use, or Conflict with
    the missing memory."""
    from ahvlite.controller.ha.inventory import check_power_on

    return check_power_on(cluster, name, **new_vm)


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
        ctx.progress(10, f"{action} {name}")
        return dict(ctx.step(action, act))


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

    def check(self, p: Any) -> None:
        self.host("host", p.host)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        p = self.params(ctx)
        spec = VmSpec(**{"uuid": str(uuid.uuid5(VM_UUID_NAMESPACE, ctx.task.id)), **p.spec})
        cspec = self.cluster()
        host = p.host
        self.host("host", host)  # the cluster may have changed since
        if p.start and ctx.task.attempts == 1:
            # A resumed attempt may find its VM already running; admission then would
            # count it twice. The first attempt checked before anything was made.
            host = _ha_admit(cspec, spec.name, memory_mib=spec.memory_mib, host=host,
                             labels=spec.labels) or host
        ctx.progress(10, f"creating {spec.name}")
        info = ctx.step("create", lambda: create_once(
            cspec, spec, host=host, start=p.start, task_id=ctx.task.id,
            attempt=ctx.task.attempts, guard=ctx.check_leader))
        return dict(info)


def create_once(cluster: Any, spec: Any, *, host: str | None, start: bool, task_id: str,
                attempt: int, guard: Callable[[], object] = lambda: None) -> dict[str, Any]:
    """Create ``spec`` unless a VM with its UUID exists (then only start it if asked).

    The volumes carry this attempt's tag. On a resumed attempt, the volumes an earlier
    attempt of this task made (its tag) that no VM uses are what that attempt left
    half-made: they go before the create is tried again; nothing else is touched.
    """
    from ahvlite.cluster import vms
    from ahvlite.virt import domains, storage

    with vms.connect(cluster) as hosts:
        if attempt > 1 and hosts.errors:
            from ahvlite.errors import HostUnreachable

            # The dead attempt's VM may sit on the silent host: creating now could twin it.
            raise HostUnreachable("cannot rule out a VM made by the earlier attempt: "
                                  + "; ".join(f"{h}: {e}" for h, e in hosts.errors.items()))
        for h, conn in hosts.conns.items():
            dom = domains.find_domain_by_uuid(conn, spec.uuid)
            if dom is not None:
                if start:
                    guard()
                    domains.power_on(dom)
                return vms.info_of(h, dom).to_dict()
        if attempt > 1 and hosts.conns:
            _, pool = hosts.any_pool()
            used = vms.volumes_in_use(hosts)
            for earlier in range(1, attempt):
                for vol in vms.tagged_volumes(spec, attempt_tag(task_id, earlier)):
                    if vol not in used:
                        guard()
                        storage.delete_volume(pool, vol)
    return vms.create_vm(cluster, spec, host=host, start=start,
                         tag=attempt_tag(task_id, attempt), guard=guard).to_dict()


class MigrateParams(Params):
    name: str = VM_NAME
    to: str = HOST_FIELD


class VmMigrate(Kind[MigrateParams]):
    """``vm.migrate``: live-migrate one VM to ``to`` (ADS submits its moves as these).

    A resumed attempt whose VM already runs on ``to`` counts as done: the dead leader's
    migration finished."""

    name = "vm.migrate"
    Params = MigrateParams

    def check(self, p: Any) -> None:
        self.host("to", p.to)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import vms
        from ahvlite.cluster.migrate import migrate_vm

        p = self.params(ctx)
        cspec = self.cluster()
        self.host("to", p.to)

        def act() -> dict[str, Any]:
            if ctx.task.attempts > 1 and vms.show_vm(cspec, p.name).host == p.to:
                return {"vm": p.name, "destination": p.to, "note": "already there"}
            return migrate_vm(cspec, p.name, to=p.to).to_dict()

        ctx.progress(10, f"migrating {p.name} to {p.to}")
        return dict(ctx.step("migrate", act))


KINDS: tuple[type[Kind[Any]], ...] = (VmLifecycle, VmSpecCreate, VmMigrate)
