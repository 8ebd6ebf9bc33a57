"""Template task kinds: capture a VM as a template (or a new version of one), choose
the active version, deploy many VMs from one."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext, suppress
from typing import Any

from pydantic import Field, model_validator

from ahvlite.controller.kinds.base import OPTIONAL_HOST, Kind, Params, attempt_tag
from ahvlite.controller.kinds.vm import VM_NAME, VM_UUID_NAMESPACE, _ha_admit, with_addresses
from ahvlite.controller.tasks import TaskContext
from ahvlite.errors import AhvliteError, InvalidSpec, OperationFailed

TEMPLATE_NAME = VM_NAME  # templates are named like VMs
MAX_USER_DATA = 64 * 1024
DEPLOY_WORKERS = 8


@contextmanager
def template_lock(cluster: Any, name: str) -> Iterator[None]:
    """One capture per template at a time, cluster-wide (the store's lock; a dead
    leader's lock goes with its session)."""
    key = hashlib.sha256(name.encode()).hexdigest()[:16]  # any template name, one key
    with cluster.state.lock(f"template-{key}",
                            busy=f"template {name} is being changed by another task",
                            hint="wait for it (`ahvlite task list`)"):
        yield


class CaptureParams(Params):
    name: str = TEMPLATE_NAME
    from_vm: str = VM_NAME


def _capture_once(kind: Kind[Any], ctx: TaskContext, p: Any, number: int, *,
                  activate: bool) -> dict[str, Any]:
    """The capture and store steps both template kinds share (see TemplateCreate)."""
    from ahvlite.cluster import templates
    from ahvlite.spec.template import TemplateVersion

    cspec = kind.cluster()

    def report(message: str) -> None:
        ctx.progress(20, message)

    def capture() -> dict[str, Any]:
        if ctx.task.attempts > 1:  # stored by the dead attempt, step not recorded?
            doc = cspec.state.doc(templates.COLLECTION, p.name)
            for v in (doc or {}).get("versions") or []:
                if isinstance(v, dict) and v.get("version") == number and \
                        v.get("from_vm") == p.from_vm:
                    return TemplateVersion(**v).model_dump(mode="json")
        templates.drop_capture_leftovers(cspec, p.name, number, p.from_vm,
                                         guard=ctx.check_leader)
        return templates.capture(cspec, p.name, number, p.from_vm, report=report,
                                 guard=ctx.check_leader).model_dump(mode="json")

    with template_lock(cspec, p.name):
        version = TemplateVersion(**ctx.step("capture", capture))
        ctx.progress(90, f"storing version {number} of template {p.name}")
        try:
            spec = ctx.step("store", lambda: templates.store_version(
                cspec.state, p.name, version, activate=activate).model_dump(mode="json"))
        except AhvliteError as exc:
            from ahvlite.controller.coord.api import NotLeader

            if not isinstance(exc, NotLeader):
                templates.drop_volumes(cspec, version)  # another version won the number
            raise
    return dict(spec)


class TemplateCreate(Kind[CaptureParams]):
    """``template.create``: capture a shut-off VM (CPU, memory, disks, NICs) as version 1.

    The template's lock is held throughout. Volumes of this capture that no stored
    version and no VM refers to are what an interrupted capture left: a run (resumed
    by the next leader, or a new one) deletes them and copies again. A resumed run
    whose version is stored already counts as done."""

    name = "template.create"
    Params = CaptureParams

    def check(self, p: CaptureParams) -> None:
        from ahvlite.cluster.templates import COLLECTION

        # A template of one version from this VM may be this task's own (resumed).
        doc = self.cluster().state.doc(COLLECTION, p.name)
        if doc is not None and not _first_from(doc, p.from_vm):
            raise _exists(p)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster.templates import COLLECTION

        p = self.params(ctx)
        self.check(p)
        if ctx.task.attempts == 1 and self.cluster().state.doc(COLLECTION, p.name):
            raise _exists(p)
        ctx.progress(5, f"capturing {p.from_vm} as template {p.name}")
        return _capture_once(self, ctx, p, 1, activate=True)


def _exists(p: Any) -> AhvliteError:
    from ahvlite.errors import Conflict

    return Conflict(f"template {p.name!r} exists",
                    hint=f"`ahvlite template version add {p.name} --from-vm {p.from_vm}` "
                         "adds a version")


def _first_from(doc: dict[str, Any], vm: str) -> bool:
    """Whether a stored template's version 1 was captured from ``vm`` (a resumed
    create finds its own template)."""
    versions = doc.get("versions")
    return isinstance(versions, list) and any(
        isinstance(v, dict) and v.get("version") == 1 and v.get("from_vm") == vm
        for v in versions) and len(versions) == 1


class VersionAddParams(CaptureParams):
    activate: bool = True


class TemplateVersionAdd(Kind[VersionAddParams]):
    """``template.version.add``: a new version captured from a VM; it becomes the
    active one unless ``activate`` is false. Earlier versions stay deployable.

    Its number is chosen once and recorded; otherwise as ``template.create``."""

    name = "template.version.add"
    Params = VersionAddParams

    def check(self, p: VersionAddParams) -> None:
        from ahvlite.cluster.templates import load_template

        load_template(self.cluster().state, p.name)  # NotFound

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster.templates import load_template

        p = self.params(ctx)
        cspec = self.cluster()
        number = ctx.step("number", lambda: load_template(cspec.state, p.name).next_version())
        ctx.progress(5, f"capturing {p.from_vm} as version {number} of template {p.name}")
        return _capture_once(self, ctx, p, number, activate=p.activate)


class ActivateParams(Params):
    name: str = TEMPLATE_NAME
    version: int = Field(ge=1)


class TemplateActivate(Kind[ActivateParams]):
    """``template.activate``: the version ``deploy`` uses by default (idempotent)."""

    name = "template.activate"
    Params = ActivateParams

    def check(self, p: ActivateParams) -> None:
        from ahvlite.cluster.templates import load_template

        load_template(self.cluster().state, p.name).version(p.version)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster.templates import set_active

        p = self.params(ctx)
        state = self.cluster().state
        return dict(ctx.step("activate", lambda: set_active(state, p.name, p.version)
                             .model_dump(mode="json")))


class DeployParams(Params):
    name: str = TEMPLATE_NAME
    count: int = Field(1, ge=1, le=500)
    prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,59}$",
                               description="VM names are PREFIX1, PREFIX2 ...")
    version: int | None = Field(None, ge=1)
    user_data: str | None = Field(None, max_length=MAX_USER_DATA,
                                  description="cloud-init user-data for the NoCloud seed")
    start: bool = True
    host: str | None = OPTIONAL_HOST

    @model_validator(mode="after")
    def _user_data(self) -> DeployParams:
        if self.user_data is not None and "\x00" in self.user_data:
            raise InvalidSpec("user_data", "(text with NUL)", "text without NUL characters")
        return self


class TemplateDeploy(Kind[DeployParams]):
    """``template.deploy``: ``count`` VMs from a template, placed across the hosts and
    made in parallel, each with a new UUID, MACs and genid, its disks cloned.

    The plan (names, UUIDs derived from the task id, MACs, hosts) is checked before
    anything is made and recorded. Each VM is then its own step: made, started after
    HA admission (guarantee mode: one power-on at a time, each counted), or undone on
    its own when anything fails, the others kept. A resumed run keeps the recorded
    VMs, counts a VM found by its UUID as made, and clears what earlier attempts left
    of the others before making them."""

    name = "template.deploy"
    Params = DeployParams

    def check(self, p: DeployParams) -> None:
        from ahvlite.cluster.templates import load_template

        self.host("host", p.host)
        load_template(self.cluster().state, p.name).version(p.version)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import ipam, templates, vms
        from ahvlite.controller.ha.config import load_settings
        from ahvlite.spec.vm import VmSpec

        p = self.params(ctx)
        cspec = self.cluster()
        self.check(p)
        ctx.progress(2, f"placing {p.count} VMs of template {p.name}")

        def uuid_of(vm: str) -> str:
            return str(uuid.uuid5(VM_UUID_NAMESPACE, f"{ctx.task.id}/{vm}"))

        plan = ctx.step("plan", lambda: templates.plan_deploy(
            cspec, p.name, count=p.count, prefix=p.prefix, version=p.version,
            start=p.start, host=p.host, uuid_of=uuid_of))
        entries = [(VmSpec(**e["spec"]), e["host"]) for e in plan["vms"]]

        def allocate() -> dict[str, str]:
            # Every NIC of every VM in one transaction: a full pool fails the deploy
            # before any disk is cloned.
            ctx.check_leader()
            return ipam.allocate_vms(cspec, [s for s, _ in entries], by=ctx.task.id,
                                     now=lambda: ctx.clock.time())

        addresses = ctx.step("addresses", allocate)
        ctx.progress(5, f"deploying {len(entries)} VMs of {p.name} v{plan['version']}: "
                        + ", ".join(f"{s.name}->{h}" for s, h in entries))
        guarantee = load_settings(cspec.state).mode == "guarantee"
        # Each admission counts the VMs started before it: one power-on at a time.
        serial = threading.Lock() if guarantee else nullcontext()
        tag = attempt_tag(ctx.task.id, ctx.task.attempts)
        earlier = [attempt_tag(ctx.task.id, k) for k in range(1, ctx.task.attempts)]

        def admit(spec: Any, host: str) -> None:
            _ha_admit(cspec, spec.name, memory_mib=spec.memory_mib, host=host,
                      labels=spec.labels)

        outcomes: dict[str, dict[str, Any]] = {
            s.name: ctx.task.steps_done[f"vm {s.name}"] for s, _ in entries
            if f"vm {s.name}" in ctx.task.steps_done}
        todo = [(s, h) for s, h in entries if s.name not in outcomes]

        def one(spec: Any, host: str) -> dict[str, Any]:
            # Connections of its own: a libvirt connection is never shared by two
            # concurrent callers (one breaking mid-call can take the client down).
            try:
                with serial, vms.connect(cspec) as hosts:
                    info = templates.deploy_vm(
                        hosts, host, spec, tag=tag, earlier_tags=earlier,
                        user_data=p.user_data, start=p.start, admit=admit,
                        guard=ctx.check_leader)
                return {"vm": with_addresses(info.to_dict(), addresses)}
            except AhvliteError as exc:
                from ahvlite.controller.coord.api import NotLeader

                if isinstance(exc, NotLeader):
                    raise
                # This VM was undone: its addresses go with it (the others keep theirs).
                with suppress(AhvliteError):
                    ctx.check_leader()
                    ipam.release_vm(cspec, spec, now=lambda: ctx.clock.time())
                return {"failed": exc.message}

        pool = ThreadPoolExecutor(DEPLOY_WORKERS, thread_name_prefix="deploy")
        try:
            running: dict[Future[dict[str, Any]], Any] = {
                pool.submit(one, s, h): s for s, h in todo}
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    spec = running.pop(fut)
                    out = fut.result()  # NotLeader: stop here, the next leader resumes
                    outcomes[spec.name] = ctx.step(f"vm {spec.name}", _const(out))
                    what = (f"{spec.name} on {out['vm']['host']} {out['vm']['state']}"
                            if "vm" in out else f"{spec.name} failed: {out['failed']}")
                    ctx.progress(5 + 95 * len(outcomes) // len(entries) - 1,
                                 f"{what} ({len(outcomes)}/{len(entries)})")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        made = [outcomes[s.name]["vm"] for s, _ in entries if "vm" in outcomes[s.name]]
        failed = {s.name: outcomes[s.name]["failed"] for s, _ in entries
                  if "failed" in outcomes[s.name]}
        if not made and failed:
            first = next(iter(failed.items()))
            raise OperationFailed(f"no VM of {p.name} was deployed; {first[0]}: {first[1]}")
        return {"template": p.name, "version": plan["version"], "vms": made,
                "failed": failed}


def _const(value: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: value


KINDS: tuple[type[Kind[Any]], ...] = (TemplateCreate, TemplateVersionAdd, TemplateActivate,
                                      TemplateDeploy)
