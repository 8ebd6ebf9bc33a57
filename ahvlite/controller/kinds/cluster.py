"""Cluster task kinds: apply a declarative cluster document, and the cluster CPU level.

``cluster.apply`` makes the stored spec equal to a cluster file's, with the same checks
as one ``host add`` / ``host remove`` per host it adds or removes, and imports the
documents an earlier version kept beside the file (state, CPU level, templates): only
those the store lacks, in the same transaction as the spec, never over the store's
newer ones.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ahvlite.controller.kinds.base import Params
from ahvlite.controller.kinds.spec import SpecKind
from ahvlite.controller.tasks import TaskContext
from ahvlite.errors import Conflict
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.spec.errors import build

CPU_DOC = "cluster/state/cpu"
REACH_FIELDS = {"uri", "ssh", "ovsdb"}  # a host changed in these is checked like a new one


class ClusterApplyParams(Params):
    spec: dict[str, Any]
    documents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    strict: bool = False

    @model_validator(mode="after")
    def _forms(self) -> ClusterApplyParams:
        from ahvlite.cluster.specwrite import check_documents

        build(ClusterSpec, **self.spec)  # a bad document is refused at once, field named
        check_documents(self.documents)
        return self


class ClusterApply(SpecKind[ClusterApplyParams]):
    """``cluster.apply``: plan (diff against the stored spec; hosts to remove must run no
    VM, hosts to add or re-reach must answer, the CPU level plan over the new hosts),
    write (the spec by compare-and-set over the planned version, with the documents the
    store lacks, in one transaction), then store a lowered CPU level.

    Applying the same document again writes nothing. A resumed run re-plans only if
    the plan was not recorded; its write finds the spec already as desired and counts
    that as its own.
    """

    name = "cluster.apply"
    Params = ClusterApplyParams

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        out = super().validate(params)
        from ahvlite.cluster.specwrite import spec_doc

        out["spec"] = spec_doc(build(ClusterSpec, **out["spec"]))  # the stored form
        return out

    def check(self, p: ClusterApplyParams) -> None:
        from ahvlite.cluster import hostfiles
        from ahvlite.cluster.specwrite import read_spec

        desired = build(ClusterSpec, **p.spec)
        for h in desired.hosts:
            hostfiles.check_host_files(h, prefix=f"hosts[{h.name}].")
        current, _ = read_spec(self.state())
        if current is not None and current.name != desired.name:
            raise Conflict(f"the store holds cluster {current.name!r}; this document is "
                           f"cluster {desired.name!r}",
                           hint="apply it to that cluster's controllers, or rename it")

    def _level(self, documents: dict[str, dict[str, Any]]) -> Any:
        """The CPU level the store will hold: its own, else the one being imported."""
        from ahvlite.cluster.cpustore import level_from_doc

        state = self.state()
        own = level_from_doc(state.get("cpu"))
        if own is None and CPU_DOC in documents:
            return level_from_doc(documents[CPU_DOC])
        return own

    def _plan(self, p: ClusterApplyParams, desired: ClusterSpec) -> dict[str, Any]:
        from ahvlite.cluster import cpulevel, inventory, ipam
        from ahvlite.cluster.specwrite import document_keys, read_spec, spec_doc
        from ahvlite.controller.kinds.hosts import check_controller_files
        from ahvlite.spec.clusterdiff import diff

        state = self.state()
        current, version = read_spec(state)
        d = diff(spec_doc(current) if current else None, spec_doc(desired),
                 list(p.documents), document_keys(state.store))
        if current is not None:
            if current.name != desired.name:
                raise Conflict(f"the store holds cluster {current.name!r}; this document "
                               f"is cluster {desired.name!r}")
            for name in d.hosts("remove"):
                inventory.check_no_running_vms(current.host(name))
            # Managed networks with allocations keep their subnet and DHCP server.
            ipam.check_networks(state.store, current.network, desired.network)
        added = [desired.host(n) for n in d.hosts("add")]
        reach: list[HostSpec] = [*added, *(desired.host(n) for n in d.hosts("change")
                                           if REACH_FIELDS & set(d.changed_host_fields(n)))]
        for h in reach:
            check_controller_files(h, prefix=f"hosts[{h.name}].")
            inventory.check_reachable(h)
        base = desired.model_copy(update={"hosts": [h for h in desired.hosts
                                                    if h.name not in d.hosts("add")]})
        plan = cpulevel.plan_hosts_add(base, self._level(p.documents), added,
                                       strict=p.strict)
        return {"version": version, "diff": d.to_dict(), "cpu": cpulevel.plan_to_dict(plan)}

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import cpulevel, cpustore
        from ahvlite.cluster.specwrite import apply_spec, read_spec

        p = self.params(ctx)
        desired = build(ClusterSpec, **p.spec)
        ctx.progress(10, f"planning cluster {desired.name}: checking new and removed hosts")
        planned = ctx.step("plan", lambda: self._plan(p, desired))
        ctx.progress(60, f"writing cluster {desired.name}")
        written = ctx.step("write", lambda: apply_spec(self.state(), desired,
                                                       planned["version"], p.documents,
                                                       guard=ctx.check_leader))
        plan = cpulevel.plan_from_dict(planned["cpu"])
        level = None
        if plan.action == "lower":
            ctx.progress(80, "lowering the cluster CPU level")
            stored, _ = read_spec(self.state())
            assert stored is not None
            level = ctx.step("cpu-level", lambda: cpulevel.finish_host_add(
                stored, cpustore.store_for(stored), plan))
        return {"cluster": desired.name, "diff": planned["diff"], **written,
                "cpu_level": level}


class CpuApplyParams(Params):
    recompute: bool = False


class ClusterCpuApply(SpecKind[CpuApplyParams]):
    """``cluster.cpu.apply``: store the hosts' baseline as the level (a manual level
    stays unless ``recompute``) and redefine every VM's CPU to it; running again
    redefines only VMs that differ."""

    name = "cluster.cpu.apply"
    Params = CpuApplyParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import cpulevel, cpustore

        p = self.params(ctx)
        spec = self.cluster()
        ctx.progress(10, "computing the baseline of every host's CPU")
        return dict(ctx.step("apply", lambda: cpulevel.apply(
            spec, cpustore.store_for(spec), recompute=p.recompute)))


class CpuSetParams(Params):
    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                       description="a libvirt CPU model or x86-64-v2/v3/v4")


class ClusterCpuSet(SpecKind[CpuSetParams]):
    """``cluster.cpu.set``: a manual level, refused if a host cannot run it (setting it
    again stores the same level)."""

    name = "cluster.cpu.set"
    Params = CpuSetParams

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        from ahvlite.cluster import cpulevel, cpustore

        p = self.params(ctx)
        spec = self.cluster()
        ctx.progress(10, f"checking that every host runs {p.model}")
        return dict(ctx.step("set", lambda: cpulevel.set_level(
            spec, cpustore.store_for(spec), p.model)))


KINDS = (ClusterApply, ClusterCpuApply, ClusterCpuSet)
