"""Kinds for drills and tests, not in a production controller's registry: a
controller offers them only with ``AHVLITE_DRILL_KINDS=1`` in its environment, which
the lab writes into its hosts' controller.env. Anywhere else a task of one fails with
the reason (:class:`Refused`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from ahvlite.controller.kinds.base import HOST_FIELD, Kind, Params
from ahvlite.controller.kinds.vm import VM_UUID_NAMESPACE
from ahvlite.controller.tasks import TaskContext
from ahvlite.errors import Conflict, InvalidSpec, OperationFailed

DRILL_ENV = "AHVLITE_DRILL_KINDS"


class SleepParams(Params):
    steps: int = Field(1, ge=1, le=1000)
    step_s: float = Field(0.1, ge=0, le=3600)


class Sleep(Kind[SleepParams]):
    """``sleep``: N steps of S seconds each (resumable)."""

    name = "sleep"
    Params = SleepParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        p = self.params(ctx)
        for i in range(p.steps):
            ctx.step(f"sleep-{i}", lambda: ctx.clock.sleep(p.step_s))
            ctx.progress(int(100 * (i + 1) / p.steps), f"step {i + 1}/{p.steps}")
        return {"steps": p.steps}


class VmCreateParams(Params):
    host: str = HOST_FIELD
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    domain_type: Literal["kvm", "qemu", "test"] = "qemu"
    memory_mib: int = Field(64, ge=16, le=1 << 20)
    hold_s: float = Field(0, ge=0, le=600)


class VmCreate(Kind[VmCreateParams]):
    """``vm.create``: define a minimal domain on one host of the cluster, exactly once.

    ``hold_s`` pauses before and after defining, so drills can kill a leader mid-task.
    """

    name = "vm.create"
    Params = VmCreateParams

    def check(self, p: VmCreateParams) -> None:
        self.host("host", p.host)

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        p = self.params(ctx)
        h = self.host("host", p.host)
        assert h is not None
        vm_uuid = str(uuid.uuid5(VM_UUID_NAMESPACE, ctx.task.id))
        ctx.step("prepare", lambda: ctx.clock.sleep(p.hold_s))
        ctx.progress(30, "defining")
        ctx.step("define", lambda: define_once(h.uri, p.model_dump(), vm_uuid,
                                               guard=ctx.check_leader))
        ctx.progress(70, "defined")
        ctx.step("settle", lambda: ctx.clock.sleep(p.hold_s))
        return {"name": p.name, "uuid": vm_uuid, "host": p.host}


def define_once(uri: str, p: dict[str, Any], vm_uuid: str, *,
                guard: Callable[[], object] = lambda: None) -> str:
    """Define the domain; a second run finds it by name and redefines the same UUID.

    libvirt treats a define with an existing name and the same UUID as an update (no
    second domain), and refuses the name under another UUID: a clash, never a twin.
    """
    from ahvlite.spec.smallguest import SimpleGuest
    from ahvlite.virt import designer, guest
    from ahvlite.virt.conn import connection

    with connection(uri) as conn:
        existed = p["name"] in {n for n, _ in guest.list_domains(conn)}
        xml = designer.simple_domain_xml(SimpleGuest(
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



KINDS: tuple[type[Kind[Any]], ...] = (Sleep, VmCreate)


class Refused(Kind[Params]):
    """A drill kind asked of a controller outside a lab: its tasks fail with the
    reason when the leader claims them (submitting one is refused the same way), and
    never run. Not listed among the kinds this controller takes."""

    resumable = False
    offered = False
    Params = Params

    def refusal(self) -> InvalidSpec:
        return InvalidSpec("kind", self.name, "a drill kind, run only by a controller in a "
                           "lab", hint=f"a lab's controllers have {DRILL_ENV}=1 in their "
                           "environment")

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        raise self.refusal()

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        raise self.refusal()


def refused(kind: type[Kind[Any]]) -> type[Kind[Any]]:
    """The stand-in for drill kind ``kind`` on a controller outside a lab."""
    return type(f"{kind.__name__}Refused", (Refused,), {"name": kind.name})
