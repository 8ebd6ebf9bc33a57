"""The task kinds the controller knows, each a handler of idempotent steps.

A task record comes from the store, which is outside this process: every kind takes
exactly its own parameters (an unknown one fails the task), names hosts only by their
name in the controller's own cluster (never a URI or a file), and acts only on that
cluster.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from ahvlite.controller.tasks import Handler, TaskContext
from ahvlite.errors import Conflict, InvalidSpec, NotFound, OperationFailed

# Domain UUIDs derive from the task id: re-running a step finds "its" VM, not a twin.
VM_UUID_NAMESPACE = uuid.UUID("5b0f3c2e-8a43-4c36-9d8e-6a1a3c0f7e21")
CLUSTER_ENV = "AHVLITE_CLUSTER"


def _only(params: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Refuse parameters this kind does not know (a record from a newer or hostile
    writer): acting on half of what was asked would be worse than not acting."""
    extra = sorted(k for k in params if k not in allowed)
    if extra:
        raise InvalidSpec(
            extra[0], params[extra[0]], f"parameters of this kind: {', '.join(allowed)}",
            hint="tasks act on the controller's own cluster (controller run --cluster); "
                 "hosts are named, never given as URIs or files")


def attempt_tag(task_id: str, attempt: int) -> str:
    """The short tag of one attempt of a task: the volumes it makes carry it, so two
    attempts (a deposed leader's and the next one's) never share a volume name."""
    return hashlib.sha256(f"{task_id}/{attempt}".encode()).hexdigest()[:8]


def _number(params: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = params.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidSpec(name, value, f"a number from {lo:g} to {hi:g}")
    return float(value)


class Sleep:
    """``sleep``: N steps of S seconds each; for drills and tests (resumable)."""

    resumable = True

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        _only(params, ("steps", "step_s"))
        return {"steps": int(_number(params, "steps", 1, 1, 1000)),
                "step_s": _number(params, "step_s", 0.1, 0, 3600)}

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        n = int(ctx.params["steps"])
        for i in range(n):
            ctx.step(f"sleep-{i}", lambda: time.sleep(ctx.params["step_s"]))
            ctx.progress(int(100 * (i + 1) / n), f"step {i + 1}/{n}")
        return {"steps": n}


class _ClusterKind:
    """Shared by the kinds that act on the controller's cluster.

    ``cluster`` gives the controller's cluster as it is now (read from the store); a
    task never names one. With it, host names are checked when the task is validated
    (by the leader, when it claims the task) and again when it runs; without it (a
    submitter) only their form is.
    """

    def __init__(self, cluster: Callable[[], Any] | None) -> None:
        self._cluster = cluster

    def cluster(self) -> Any:
        if self._cluster is None:
            raise NotFound("this controller has no cluster",
                           hint="`ahvlite cluster apply -f cluster.yaml` stores one")
        return self._cluster()

    def check_host(self, field: str, host: object, *, optional: bool = False) -> str | None:
        """``host`` as a host name of the cluster; validated against the cluster file
        when this kind has one (the leader's), else only its form (a submitter)."""
        if host is None and optional:
            return None
        from ahvlite.spec.cluster import NAME

        if not isinstance(host, str) or not re.fullmatch(NAME, host):
            raise InvalidSpec(field, host, "a host name of the cluster")
        if self._cluster is not None:
            cluster_host(self.cluster(), field, host)
        return host


def cluster_host(cluster: Any, field: str, host: str) -> Any:
    """The cluster's HostSpec named ``host``, or InvalidSpec listing the hosts."""
    names = [h.name for h in cluster.hosts]
    if host not in names:
        raise InvalidSpec(field, host, f"a host of cluster {cluster.name!r} "
                          f"({', '.join(names) or 'none'})")
    return cluster.host(host)


class VmCreate(_ClusterKind):
    """``vm.create``: define a minimal domain on one host of the cluster, exactly once.

    ``hold_s`` pauses before and after defining, so drills can kill a leader mid-task.
    """

    resumable = True

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        _only(params, ("host", "name", "domain_type", "memory_mib", "hold_s"))
        host = self.check_host("host", params.get("host"))
        name = params.get("name")
        if not isinstance(name, str) or not name or not all(
                c.isalnum() or c in "-_." for c in name):
            raise InvalidSpec("name", name, "letters, digits, - _ .")
        domain_type = params.get("domain_type", "qemu")
        if domain_type not in ("kvm", "qemu", "test"):
            raise InvalidSpec("domain_type", domain_type, "kvm, qemu or test")
        return {"host": host, "name": name, "domain_type": domain_type,
                "memory_mib": int(_number(params, "memory_mib", 64, 16, 1 << 20)),
                "hold_s": _number(params, "hold_s", 0, 0, 600)}

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        p = ctx.params
        uri = cluster_host(self.cluster(), "host", p["host"]).uri
        vm_uuid = str(uuid.uuid5(VM_UUID_NAMESPACE, ctx.task.id))
        ctx.step("prepare", lambda: time.sleep(p["hold_s"]))
        ctx.progress(30, "defining")
        ctx.step("define", lambda: define_once(uri, p, vm_uuid, guard=ctx.check_leader))
        ctx.progress(70, "defined")
        ctx.step("settle", lambda: time.sleep(p["hold_s"]))
        return {"name": p["name"], "uuid": vm_uuid, "host": p["host"]}


def define_once(uri: str, p: dict[str, Any], vm_uuid: str, *,
                guard: Callable[[], object] = lambda: None) -> str:
    """Define the domain; a second run finds it by name and redefines the same UUID.

    libvirt treats a define with an existing name and the same UUID as an update (no
    second domain), and refuses the name under another UUID: a clash, never a twin.
    """
    from ahvlite.virt import guest
    from ahvlite.virt.conn import connection

    with connection(uri) as conn:
        existed = p["name"] in {n for n, _ in guest.list_domains(conn)}
        xml = guest.simple_domain_xml(guest.SimpleGuest(
            name=p["name"], uuid=vm_uuid, domain_type=p["domain_type"],
            memory_mib=p["memory_mib"], machine="pc"))
        guard()
        try:
            guest.define(conn, xml)
        except OperationFailed as exc:
            if existed:
                raise Conflict(f"a domain named {p['name']} already exists on {p['host']} "
                               f"({exc.message})", hint="choose another name") from None
            raise
    return "existed" if existed else "defined"


# -- VM lifecycle through the cluster file (what `ahvlite vm ...` submits) -------------

LIFECYCLE_ACTIONS = ("start", "shutdown", "stop", "reboot", "delete")


def _bool(params: dict[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise InvalidSpec(name, value, "true or false")
    return value


def _vm_name(params: dict[str, Any]) -> str:
    from ahvlite.spec.vm import check_name

    name = params.get("name")
    if not isinstance(name, str):
        raise InvalidSpec("name", name, "a VM name")
    return check_name("name", name)


class VmLifecycle(_ClusterKind):
    """``vm.lifecycle``: start, shutdown, stop (forced), reboot or delete one VM.

    Each action is one step that is safe to repeat: start on a running VM, shutdown or
    stop on a stopped one do nothing; delete of a VM already gone counts as done when
    an earlier attempt (a dead leader's) may have deleted it.
    """

    resumable = True

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        _only(params, ("action", "name", "force", "timeout_s"))
        action = params.get("action")
        if action not in LIFECYCLE_ACTIONS:
            raise InvalidSpec("action", action, ", ".join(LIFECYCLE_ACTIONS))
        out: dict[str, Any] = {"action": action, "name": _vm_name(params),
                               "force": _bool(params, "force")}
        if action == "stop" and not out["force"]:
            raise InvalidSpec("force", False, "true: stop pulls the plug without asking "
                              "the guest", hint="use action shutdown to ask the guest first")
        if action == "shutdown":
            out["timeout_s"] = _number(params, "timeout_s", 60, 0, 3600)
        return out

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import vms

        p = ctx.params
        cspec = self.cluster()
        name, action = p["name"], p["action"]

        def act() -> dict[str, Any]:
            if action == "start":
                return vms.start_vm(cspec, name).to_dict()
            if action == "shutdown":
                return vms.shutdown_vm(cspec, name, timeout_s=p["timeout_s"],
                                       force=p["force"]).to_dict()
            if action == "stop":
                return vms.stop_vm(cspec, name, force=True).to_dict()
            if action == "reboot":
                return vms.reboot_vm(cspec, name).to_dict()
            try:
                return vms.delete_vm(cspec, name, force=p["force"])
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


class VmSpecCreate(_ClusterKind):
    """``vm.spec.create``: a full :class:`VmSpec` (JSON) placed, made and maybe started.

    The VM's UUID is the spec's, or derives from the task id: a re-run finds the VM an
    earlier attempt made by UUID and counts it as done (starting it if asked), so a
    leader dying mid-create never leaves a twin.
    """

    resumable = True

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        from ahvlite.spec.errors import build
        from ahvlite.spec.vm import VmSpec

        _only(params, ("spec", "host", "start"))
        raw = params.get("spec")
        if not isinstance(raw, dict):
            raise InvalidSpec("spec", raw, "a VmSpec as a JSON object (name, memory_mib, ...)")
        spec = build(VmSpec, **raw)
        dumped = spec.model_dump(mode="json")
        if raw.get("uuid") is None:
            del dumped["uuid"]  # derived from the task id when it runs
        host = self.check_host("host", params.get("host"), optional=True)
        return {"spec": dumped, "host": host, "start": _bool(params, "start")}

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.spec.vm import VmSpec

        p = ctx.params
        spec = VmSpec(**{"uuid": str(uuid.uuid5(VM_UUID_NAMESPACE, ctx.task.id)),
                         **p["spec"]})
        cspec = self.cluster()
        host = p["host"]
        if host is not None:
            cluster_host(cspec, "host", host)  # the cluster may have changed since
        if p["start"] and ctx.task.attempts == 1:
            # A resumed attempt may find its VM already running; admission then would
            # count it twice. The first attempt checked before anything was made.
            host = _ha_admit(cspec, spec.name, memory_mib=spec.memory_mib, host=host,
                             labels=spec.labels) or host
        ctx.progress(10, f"creating {spec.name}")
        info = ctx.step("create", lambda: create_once(
            cspec, spec, host=host, start=p["start"], task_id=ctx.task.id,
            attempt=ctx.task.attempts, guard=ctx.check_leader))
        return dict(info)


def _ha_admit(cluster: Any, name: str, **new_vm: Any) -> str | None:
    """HA admission (guarantee mode) for a power-on: the host to use, or Conflict with
    the missing memory."""
    from ahvlite.controller.ha.inventory import check_power_on

    return check_power_on(cluster, name, **new_vm)


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


class VmMigrate(_ClusterKind):
    """``vm.migrate``: live-migrate one VM to ``to`` (ADS submits its moves as these).

    A resumed attempt whose VM already runs on ``to`` counts as done: the dead leader's
    migration finished."""

    resumable = True

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        _only(params, ("name", "to"))
        to = self.check_host("to", params.get("to"))
        return {"name": _vm_name(params), "to": to}

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import vms
        from ahvlite.cluster.migrate import migrate_vm

        p = ctx.params
        cspec = self.cluster()
        cluster_host(cspec, "to", p["to"])

        def act() -> dict[str, Any]:
            if ctx.task.attempts > 1 and vms.show_vm(cspec, p["name"]).host == p["to"]:
                return {"vm": p["name"], "destination": p["to"], "note": "already there"}
            return migrate_vm(cspec, p["name"], to=p["to"]).to_dict()

        ctx.progress(10, f"migrating {p['name']} to {p['to']}")
        return dict(ctx.step("migrate", act))


def registry(cluster: Callable[[], Any] | None = None) -> dict[str, Handler]:
    """Every kind; ``cluster`` gives the controller's cluster (None: a submitter's
    registry, which checks the form of parameters only)."""
    return {"sleep": Sleep(), "vm.create": VmCreate(cluster),
            "vm.lifecycle": VmLifecycle(cluster),
            "vm.spec.create": VmSpecCreate(cluster),
            "vm.migrate": VmMigrate(cluster)}
