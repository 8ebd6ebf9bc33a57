"""Reads about VMs: every VM of the cluster, one VM, where a VM's CPU can run."""

from __future__ import annotations

from typing import Any

from ahvlite.controller.api.reads import NoQuery, Read, ReadContext


def _with_ipam(ctx: ReadContext, network: Any, infos: list[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """Each VM with the addresses IPAM holds for its NICs (by MAC, on the NIC's own
    network and for this VM's UUID), beside the ones handed through fw_cfg."""
    from ahvlite.cluster import ipam

    if not any(n.ipam is not None for n in network.networks):
        return infos
    held = ipam.by_mac(ctx.coord, network)
    for info in infos:
        for nic in info.get("nics") or []:
            a = held.get(str(nic.get("mac") or "").lower())
            if a is None or a.network != nic.get("network") or a.vm_uuid != info.get("uuid"):
                continue
            nic["ip"] = a.ip
            if a.ip not in info["ips"]:
                info["ips"].append(a.ip)
    return infos


def vm_list(ctx: ReadContext, _q: NoQuery) -> dict[str, Any]:
    from ahvlite.cluster import vms

    spec = ctx.spec()
    found, unreachable = vms.list_vms(spec)
    return {"vms": _with_ipam(ctx, spec.network, [v.to_dict() for v in found]),
            "unreachable": unreachable}


def vm_show(ctx: ReadContext, _q: NoQuery, *, name: str) -> dict[str, Any]:
    from ahvlite.cluster import vms

    spec = ctx.spec()
    return _with_ipam(ctx, spec.network, [vms.show_vm(spec, name).to_dict()])[0]


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
