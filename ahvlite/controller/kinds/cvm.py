"""CVM task kinds: deploy a host's controller VM from an image uploaded to the leader,
start, stop and remove it. The work is the cluster layer's (``cluster.cvm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from ahvlite.controller.kinds.base import HostKind, HostParams, Kind
from ahvlite.controller.tasks import TaskContext
from ahvlite.errors import NotFound, Unsupported

PCI_ADDRESS = r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$"
UPLOAD_ID = r"^[0-9a-f]{32}$"
PciAddress = Annotated[str, StringConstraints(pattern=PCI_ADDRESS)]
HostFile = Annotated[str, StringConstraints(pattern=r"^/[^\x00]*$", max_length=4096)]


class DeployParams(HostParams):
    upload: str = Field(pattern=UPLOAD_ID,
                        description="the boot image, staged on the leader (POST /v1/uploads)")
    vcpus: int = Field(8, ge=1, le=512)
    memory_mib: int = Field(16384, ge=64, le=1 << 24)
    controllers: list[PciAddress] = Field(default_factory=list, max_length=64)
    lab_luns: list[HostFile] = Field(default_factory=list, max_length=64)
    mgmt_vlan: int | None = Field(None, ge=1, le=4094)
    start: bool = True


class StopParams(HostParams):
    force: bool = False
    timeout_s: float = Field(120, gt=0, le=3600)


class CvmDeploy(HostKind[DeployParams]):
    """``cvm.deploy``: define (and start) ``cvm-HOST`` from a staged upload; every check
    first, everything undone on failure, the upload removed afterwards.

    Not resumable: the upload is staged on the leader that took it, and a deployment
    cut off half-way is undone by ``cvm remove HOST``, not finished by another leader.
    """

    name = "cvm.deploy"
    resumable = False
    Params = DeployParams

    def __init__(self, cluster: Any = None) -> None:
        super().__init__(cluster)
        self._uploads: Any = None

    def use_uploads(self, area: Any) -> None:
        self._uploads = area

    def staged(self, upload_id: str) -> Path:
        if self._uploads is None:
            raise Unsupported("this controller takes no uploads (it serves no API)")
        path: Path = self._uploads.path(upload_id)
        return path

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import cvm

        p: DeployParams = self.params(ctx)
        cluster = self.cluster()
        self.host("host", p.host)
        image = self.staged(p.upload)
        try:
            ctx.check_leader()
            return cvm.deploy(cluster, p.host, image=image, vcpus=p.vcpus,
                              memory_mib=p.memory_mib, controllers=tuple(p.controllers),
                              lab_luns=tuple(p.lab_luns), mgmt_vlan=p.mgmt_vlan,
                              start=p.start, report=lambda msg: ctx.progress(50, msg))
        finally:
            image.unlink(missing_ok=True)  # one upload, one deployment


class CvmStart(HostKind[HostParams]):
    """``cvm.start``: start ``cvm-HOST`` (already running: nothing to do)."""

    name = "cvm.start"
    Params = HostParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import cvm

        p = self.params(ctx)
        ctx.progress(10, f"starting the CVM of {p.host}")
        ctx.check_leader()
        return cvm.start(self.cluster(), p.host)


class CvmStop(HostKind[StopParams]):
    """``cvm.stop``: ACPI shutdown of ``cvm-HOST``; power off after ``timeout_s`` only
    with ``force`` (stopped already: nothing to do)."""

    name = "cvm.stop"
    Params = StopParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import cvm

        p = self.params(ctx)
        ctx.progress(10, f"stopping the CVM of {p.host}")
        ctx.check_leader()
        return cvm.stop(self.cluster(), p.host, force=p.force, timeout_s=p.timeout_s)


class CvmRemove(HostKind[HostParams]):
    """``cvm.remove``: power off and undefine ``cvm-HOST``, controllers back to the
    host, its volumes and lab loops gone. A resumed run does what is left (what the
    first attempt removed is not there any more); one that finds nothing at all counts
    as done."""

    name = "cvm.remove"
    Params = HostParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import cvm

        p = self.params(ctx)
        ctx.check_leader()
        try:
            return cvm.remove(self.cluster(), p.host,
                              report=lambda msg: ctx.progress(50, msg))
        except NotFound:
            if ctx.task.attempts == 1:
                raise
            return {"host": p.host, "name": f"cvm-{p.host}", "undefined": False,
                    "reattached": [], "deleted_volumes": [], "detached_loops": [],
                    "note": "already gone"}


KINDS: tuple[type[Kind[Any]], ...] = (CvmDeploy, CvmStart, CvmStop, CvmRemove)
