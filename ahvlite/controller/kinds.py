"""The task kinds the controller knows, each a handler of idempotent steps."""

from __future__ import annotations

import time
import uuid
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


def registry() -> dict[str, Handler]:
    return {"sleep": Sleep(), "vm.create": VmCreate()}
