"""The task kinds the controller knows, each a handler of idempotent steps."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from ahvlite.controller.tasks import Handler, TaskContext
from ahvlite.errors import Conflict, InvalidSpec, OperationFailed

# Domain UUIDs derive from the task id: re-running a step finds "its" VM, not a twin.
VM_UUID_NAMESPACE = uuid.UUID("5b0f3c2e-8a43-4c36-9d8e-6a1a3c0f7e21")


def _number(params: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = params.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidSpec(name, value, f"a number from {lo:g} to {hi:g}")
    return float(value)


class Sleep:
    """``sleep``: N steps of S seconds each; for drills and tests (resumable)."""

    resumable = True

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"steps": int(_number(params, "steps", 1, 1, 1000)),
                "step_s": _number(params, "step_s", 0.1, 0, 3600)}

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        n = int(ctx.params["steps"])
        for i in range(n):
            ctx.step(f"sleep-{i}", lambda: time.sleep(ctx.params["step_s"]))
            ctx.progress(int(100 * (i + 1) / n), f"step {i + 1}/{n}")
        return {"steps": n}


class VmCreate:
    """``vm.create``: define a minimal domain on one libvirt URI, exactly once.

    ``hold_s`` pauses before and after defining, so drills can kill a leader mid-task.
    """

    resumable = True

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        uri, name = params.get("uri"), params.get("name")
        if not isinstance(uri, str) or not uri:
            raise InvalidSpec("uri", uri, "a libvirt URI, e.g. qemu+tls://HOST/system")
        if not isinstance(name, str) or not name or not all(
                c.isalnum() or c in "-_." for c in name):
            raise InvalidSpec("name", name, "letters, digits, - _ .")
        domain_type = params.get("domain_type", "qemu")
        if domain_type not in ("kvm", "qemu", "test"):
            raise InvalidSpec("domain_type", domain_type, "kvm, qemu or test")
        return {"uri": uri, "name": name, "domain_type": domain_type,
                "memory_mib": int(_number(params, "memory_mib", 64, 16, 1 << 20)),
                "hold_s": _number(params, "hold_s", 0, 0, 600)}

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        p = ctx.params
        vm_uuid = str(uuid.uuid5(VM_UUID_NAMESPACE, ctx.task.id))
        ctx.step("prepare", lambda: time.sleep(p["hold_s"]))
        ctx.progress(30, "defining")
        ctx.step("define", lambda: define_once(p, vm_uuid))
        ctx.progress(70, "defined")
        ctx.step("settle", lambda: time.sleep(p["hold_s"]))
        return {"name": p["name"], "uuid": vm_uuid, "uri": p["uri"]}


def define_once(p: dict[str, Any], vm_uuid: str) -> str:
    """Define the domain; a second run finds it by name and redefines the same UUID.

    libvirt treats a define with an existing name and the same UUID as an update (no
    second domain), and refuses the name under another UUID: a clash, never a twin.
    """
    from ahvlite.virt import guest
    from ahvlite.virt.conn import connection

    with connection(p["uri"]) as conn:
        existed = p["name"] in {n for n, _ in guest.list_domains(conn)}
        xml = guest.simple_domain_xml(guest.SimpleGuest(
            name=p["name"], uuid=vm_uuid, domain_type=p["domain_type"],
            memory_mib=p["memory_mib"], machine="pc"))
        try:
            guest.define(conn, xml)
        except OperationFailed as exc:
            if existed:
                raise Conflict(f"a domain named {p['name']} already exists on {p['uri']} "
                               f"({exc.message})", hint="choose another name") from None
            raise
    return "existed" if existed else "defined"


# -- VM lifecycle through the cluster file (what `ahvlite vm ...` submits) -------------

LIFECYCLE_ACTIONS = ("start", "shutdown", "stop", "reboot", "delete")
CLUSTER_ENV = "AHVLITE_CLUSTER"


def _cluster_param(params: dict[str, Any]) -> str | None:
    value = params.get("cluster")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidSpec("cluster", value, "the cluster file's path on the controller host, "
                          "or none for the controller's own (--cluster)")
    return value


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


class _ClusterKind:
    """Shared by the kinds that act through a cluster file: which file, loaded."""

    def __init__(self, cluster_file: Path | None) -> None:
        self.cluster_file = cluster_file

    def cluster(self, params: dict[str, Any]) -> Any:
        from ahvlite.errors import NotFound
        from ahvlite.spec.cluster import load_cluster

        path = params.get("cluster") or self.cluster_file or os.environ.get(CLUSTER_ENV)
        if not path:
            raise NotFound("the task names no cluster file and this controller has none",
                           hint="run the controller with --cluster, or submit with --cluster")
        return load_cluster(Path(path))


class VmLifecycle(_ClusterKind):
    """``vm.lifecycle``: start, shutdown, stop (forced), reboot or delete one VM.

    Each action is one step that is safe to repeat: start on a running VM, shutdown or
    stop on a stopped one do nothing; delete of a VM already gone counts as done when
    an earlier attempt (a dead leader's) may have deleted it.
    """

    resumable = True

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        action = params.get("action")
        if action not in LIFECYCLE_ACTIONS:
            raise InvalidSpec("action", action, ", ".join(LIFECYCLE_ACTIONS))
        out: dict[str, Any] = {"action": action, "name": _vm_name(params),
                               "cluster": _cluster_param(params),
                               "force": _bool(params, "force")}
        if action == "stop" and not out["force"]:
            raise InvalidSpec("force", False, "true: stop pulls the plug without asking "
                              "the guest", hint="use action shutdown to ask the guest first")
        if action == "shutdown":
            out["timeout_s"] = _number(params, "timeout_s", 60, 0, 3600)
        return out

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import vms
        from ahvlite.errors import NotFound

        p = ctx.params
        cspec = self.cluster(p)
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

        raw = params.get("spec")
        if not isinstance(raw, dict):
            raise InvalidSpec("spec", raw, "a VmSpec as a JSON object (name, memory_mib, ...)")
        spec = build(VmSpec, **raw)
        dumped = spec.model_dump(mode="json")
        if raw.get("uuid") is None:
            del dumped["uuid"]  # derived from the task id when it runs
        host = params.get("host")
        if host is not None and (not isinstance(host, str) or not host):
            raise InvalidSpec("host", host, "a host name of the cluster, or none to place")
        return {"spec": dumped, "host": host, "start": _bool(params, "start"),
                "cluster": _cluster_param(params)}

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.spec.vm import VmSpec

        p = ctx.params
        spec = VmSpec(**{"uuid": str(uuid.uuid5(VM_UUID_NAMESPACE, ctx.task.id)),
                         **p["spec"]})
        cspec = self.cluster(p)
        host = p["host"]
        if p["start"] and ctx.task.attempts == 1:
            # A resumed attempt may find its VM already running; admission then would
            # count it twice. The first attempt checked before anything was made.
            host = _ha_admit(cspec, spec.name, memory_mib=spec.memory_mib, host=host,
                             labels=spec.labels) or host
        ctx.progress(10, f"creating {spec.name}")
        info = ctx.step("create", lambda: create_once(
            cspec, spec, host=host, start=p["start"], resumed=ctx.task.attempts > 1))
        return dict(info)


def _ha_admit(cluster: Any, name: str, **new_vm: Any) -> str | None:
    """HA admission (guarantee mode) for a power-on: the host to use, or Conflict with
    the missing memory. Needs the cluster file, where the HA settings live."""
    if cluster.source is None:
        return None
    from ahvlite.controller.ha.inventory import check_power_on

    return check_power_on(cluster.source, cluster, name, **new_vm)


def create_once(cluster: Any, spec: Any, *, host: str | None, start: bool,
                resumed: bool) -> dict[str, Any]:
    """Create ``spec`` unless a VM with its UUID exists (then only start it if asked).

    On a resumed attempt, volumes named for the VM with no VM of that name anywhere are
    what the dead attempt left half-made: they go before the create is tried again.
    """
    from ahvlite.cluster import vms
    from ahvlite.virt import domains, storage

    with vms.connect(cluster) as hosts:
        if resumed and hosts.errors:
            from ahvlite.errors import HostUnreachable

            # The dead attempt's VM may sit on the silent host: creating now could twin it.
            raise HostUnreachable("cannot rule out a VM made by the earlier attempt: "
                                  + "; ".join(f"{h}: {e}" for h, e in hosts.errors.items()))
        for h, conn in hosts.conns.items():
            dom = domains.find_domain_by_uuid(conn, spec.uuid)
            if dom is not None:
                if start:
                    domains.power_on(dom)
                return vms.info_of(h, dom).to_dict()
        if resumed and hosts.conns and not any(
                domains.find_domain(c, spec.name) is not None for c in hosts.conns.values()):
            _, pool = hosts.any_pool()
            for disk in spec.disk_names():
                storage.delete_volume(pool, vms.vm_volume(spec.name, disk))
            storage.delete_volume(pool, vms.nvram_volume(spec.name))
    return vms.create_vm(cluster, spec, host=host, start=start).to_dict()


class VmMigrate(_ClusterKind):
    """``vm.migrate``: live-migrate one VM to ``to`` (ADS submits its moves as these).

    A resumed attempt whose VM already runs on ``to`` counts as done: the dead leader's
    migration finished."""

    resumable = True

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        to = params.get("to")
        if not isinstance(to, str) or not to:
            raise InvalidSpec("to", to, "the destination host's name")
        return {"name": _vm_name(params), "to": to, "cluster": _cluster_param(params)}

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import vms
        from ahvlite.cluster.migrate import migrate_vm

        p = ctx.params
        cspec = self.cluster(p)

        def act() -> dict[str, Any]:
            if ctx.task.attempts > 1 and vms.show_vm(cspec, p["name"]).host == p["to"]:
                return {"vm": p["name"], "destination": p["to"], "note": "already there"}
            return migrate_vm(cspec, p["name"], to=p["to"],
                              cluster_file=cspec.source).to_dict()

        ctx.progress(10, f"migrating {p['name']} to {p['to']}")
        return dict(ctx.step("migrate", act))


def registry(cluster_file: Path | None = None) -> dict[str, Handler]:
    """Every kind; ``cluster_file`` is the controller's own (``--cluster``)."""
    return {"sleep": Sleep(), "vm.create": VmCreate(),
            "vm.lifecycle": VmLifecycle(cluster_file),
            "vm.spec.create": VmSpecCreate(cluster_file),
            "vm.migrate": VmMigrate(cluster_file)}
