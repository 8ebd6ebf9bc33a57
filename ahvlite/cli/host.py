"""``ahvlite host``: the hosts of the cluster file, their state and facts."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from ahvlite.cli import maintenance as maintenance_cli
from ahvlite.cli.context import ClusterOpt, load
from ahvlite.cli.output import console, emit_json, err_console, progress, table
from ahvlite.cli.provision import provision_cmd
from ahvlite.cluster import cpulevel, cpustore, inventory
from ahvlite.errors import InvalidSpec
from ahvlite.spec.facts import HostFacts
from ahvlite.spec.uri import check_uri

app = typer.Typer(no_args_is_help=True, help="Hosts: list, show, facts, add, remove.")
app.command(name="provision")(provision_cmd)
app.add_typer(maintenance_cli.app, name="maintenance")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.command(name="list")
def list_(cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Every host with its connection state (checked now, in parallel)."""
    _, spec = load(cluster)
    states = inventory.statuses(spec)
    if json_out:
        emit_json([asdict(s) for s in states])
        return
    rows = [[s.name, s.state, s.hostname, s.running_vms, s.uri.split("?")[0],
             s.error or ""] for s in states]
    console.print(table(f"cluster {spec.name}", ["host", "state", "hostname", "running VMs",
                                                  "uri", "error"], rows))


@app.command()
def show(host: Annotated[str, typer.Argument(help="Host name.")],
         cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """One host: its cluster-file entry and connection state."""
    _, spec = load(cluster)
    h = spec.host(host)
    st = inventory.host_status(h)
    data = {**h.model_dump(mode="json"), **{k: v for k, v in asdict(st).items()
                                           if k not in ("name", "uri")}}
    if json_out:
        emit_json(data)
        return
    for k, v in data.items():
        console.print(f"[bold]{k:12}[/] {v}", highlight=False)


def _kvm_words(f: HostFacts) -> str:
    if f.kvm_works is not None:
        return "works" if f.kvm_works else "present but does not boot guests (TCG used)"
    return "available, not probed" if f.kvm_available else "absent"


def _render_facts(f: HostFacts) -> None:
    console.print(f"[bold]{f.name}[/] ({f.hostname}): libvirt {f.libvirt_version}, "
                  f"QEMU {f.qemu_version}, domain types {', '.join(f.domain_types)}, "
                  f"KVM {_kvm_words(f)}", highlight=False)
    c = f.cpu
    console.print(f"  CPU {c.vendor} {c.model} (host-model {c.host_model}), "
                  f"{c.sockets} socket(s) x {c.cores} core(s) x {c.threads} thread(s), "
                  f"{c.online_cpus} online, {len(c.features)} features", highlight=False)
    console.print(f"  memory {f.memory_total_mib} MiB total, {f.memory_free_mib} MiB free; "
                  f"NUMA cells {len(f.numa)}; hugepages "
                  + (", ".join(f"{h.size_kib} KiB {h.free}/{h.total} free" for h in f.hugepages)
                     or "none"), highlight=False)
    console.print(f"  PCI devices {len(f.pci_devices)}; pools "
                  + ", ".join(f"{p.name} ({'active' if p.active else 'inactive'})"
                              for p in f.pools), highlight=False)
    if f.remote:
        r = f.remote
        console.print(f"  IOMMU cmdline {r.iommu_cmdline or 'none'}, groups populated "
                      f"{r.iommu_groups_populated}, vfio modules {r.vfio_modules or 'none'}, "
                      f"OVS {r.ovs_version}", highlight=False)
    elif f.remote_error:
        console.print(f"  [yellow]SSH facts unavailable:[/] {f.remote_error}", highlight=False)


@app.command()
def facts(host: Annotated[str | None, typer.Argument(help="Host (default: all).")] = None,
          cluster: ClusterOpt = None, json_out: JsonOpt = False,
          serial: Annotated[bool, typer.Option(
              "--serial", help="One host after another (default: in parallel).")] = False,
          ) -> None:
    """Facts from libvirt (CPU, NUMA, memory, PCI, pools) and SSH (IOMMU, vfio, OVS)."""
    _, spec = load(cluster)
    t0 = time.monotonic()
    with progress(not json_out, "gathering facts"):
        result = inventory.all_facts(spec, [host] if host else None, in_parallel=not serial)
    if json_out:
        emit_json([f.model_dump(mode="json") for f in result])
        return
    for f in result:
        _render_facts(f)
    err_console.print(f"{len(result)} host(s) in {time.monotonic() - t0:.2f} s")


def _labels(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidSpec("--label", item, "KEY=VALUE, e.g. ahvlite.io/domain-type=qemu")
        out[key] = value
    return out


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="Name for the host in the cluster.")],
    uri: Annotated[str, typer.Option(
        "--uri", help="libvirt URI: qemu+tls://ADDR/system[?pkipath=DIR], "
                      "qemu+ssh://[USER@]ADDR/system or qemu:///system")],
    ssh: Annotated[str | None, typer.Option("--ssh", help="USER@HOST for SSH.")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="SSH private key.")] = None,
    known_hosts: Annotated[Path | None, typer.Option(
        "--known-hosts", help="known_hosts file that vouches for the host key.")] = None,
    trust_on_first_use: Annotated[bool, typer.Option(
        "--trust-on-first-use", help="Record an unknown SSH host key instead of refusing.")]
        = False,
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="KEY=VALUE label for the host (repeatable).")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse a host that would lower the cluster CPU level.")] = False,
    cluster: ClusterOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Add a host after checking that libvirt (and SSH, if given) answer.

    With a cluster CPU level stored, a host that cannot run it lowers the level (VMs
    take it at their next power cycle), or is refused with --strict.
    """
    check_uri(uri, "--uri")  # before anything else: no connection to a refused URI
    path, spec = load(cluster)
    with progress(not json_out, f"checking {name}"):
        h = inventory.check_new_host(spec, name=name, uri=uri, ssh=ssh, key=key,
                                     known_hosts=known_hosts,
                                     trust_on_first_use=trust_on_first_use,
                                     labels=_labels(label))
        store = cpustore.store_for(spec)
        plan = cpulevel.plan_host_add(spec, store, h, strict=strict)
    joined = inventory.add_host(path, spec, h)
    with progress(not json_out and plan.action == "lower", "lowering the CPU level"):
        level = cpulevel.finish_host_add(joined, store, plan)
    if json_out:
        emit_json({**h.model_dump(mode="json"), "cpu_level": level})
        return
    console.print(f"added {name} ({uri}) to {path}")
    if plan.action == "lower" and plan.level is not None:
        console.print(f"[yellow]cluster CPU level lowered[/] to {plan.level.model} "
                      f"({name} lacks {', '.join(plan.missing) or 'features of the old level'})",
                      highlight=False)
        for vm in level["next_power_cycle"]:
            console.print(f"{vm}: takes effect at next power cycle", highlight=False)
    elif plan.action == "keep" and plan.level is not None:
        console.print(f"{name} runs the cluster CPU level {plan.level.model}; unchanged",
                      highlight=False)


@app.command()
def remove(name: Annotated[str, typer.Argument(help="Host name.")],
           force: Annotated[bool, typer.Option("--force", help="Even if unreachable.")] = False,
           cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Remove a host from the cluster file (refused while VMs run there)."""
    path, spec = load(cluster)
    inventory.remove_host(path, spec, name, force=force)
    if json_out:
        emit_json({"removed": name})
    else:
        console.print(f"removed {name} from {path}")
