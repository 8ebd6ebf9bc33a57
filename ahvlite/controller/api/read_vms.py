"""Reads about VMs: every VM of the cluster, one VM, where a VM's CPU can run."""

from __future__ import annotations

from typing import Any

from ahvlite.controller.api.reads import NoQuery, Read, ReadContext


def vm_list(ctx: ReadContext, _q: NoQuery) -> dict[str, Any]:
    from ahvlite.cluster import vms

    found, unreachable = vms.list_vms(ctx.spec())
    return {"vms": [v.to_dict() for v in found], "unreachable": unreachable}


def vm_show(ctx: ReadContext, _q: NoQuery, *, name: str) -> dict[str, Any]:
    from ahvlite.cluster import vms

    return vms.show_vm(ctx.spec(), name).to_dict()


def vm_cpu_check(ctx: ReadContext, _q: NoQuery, *, name: str) -> Any:
    from ahvlite.cluster import cpulevel

    return cpulevel.check_vm(ctx.spec(), name)


def connections(ctx: ReadContext, _q: NoQuery) -> dict[str, Any]:
    from ahvlite.cluster import vms

    return {"controller": ctx.controller, "hosts": vms.connection_counts(ctx.spec())}


READS: tuple[Read, ...] = (
    Read("/v1/vms", vm_list, "every VM of the cluster, and the hosts that did not answer"),
    Read("/v1/vms/{name}", vm_show, "one VM: where it runs, its devices, labels, addresses"),
    Read("/v1/vms/{name}/cpu-check", vm_cpu_check,
         "which hosts can run the VM's CPU, and what the others lack"),
    Read("/v1/controller/connections", connections,
         "this controller's libvirt connections per host: opened, and lent to operations "
         "(one lease per operation that went to the host)"),
)
