"""``ahvlite host``: the cluster's hosts, their state and facts; add and remove them.

Everything goes through the API: reads are served by any controller (which reaches
the hosts itself), ``add`` and ``remove`` are tasks the leader runs. Paths given to
``add`` (``--key``, ``--known-hosts``) are files on the controllers, not here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ahvlite.cli import maintenance as maintenance_cli
from ahvlite.cli.api import WaitOpt, get, run_task
from ahvlite.cli.output import console, emit_json, err_console, progress, table
from ahvlite.cli.provision import provision_cmd
from ahvlite.errors import InvalidSpec

if TYPE_CHECKING:
    from ahvlite.spec.facts import HostFacts

app = typer.Typer(no_args_is_help=True, help="Hosts: list, show, facts, add, remove.")
app.command(name="provision")(provision_cmd)
app.add_typer(maintenance_cli.app, name="maintenance")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
HostArg = Annotated[str, typer.Argument(help="Host name.")]


@app.command(name="list")
def list_(json_out: JsonOpt = False) -> None:
    """Every host with its connection state (checked now, in parallel, by a controller)."""
    data = get("/v1/hosts")
    if json_out:
        emit_json(data["hosts"])
        return
    rows = [[s["name"], s["state"], s["hostname"], s["running_vms"], s["uri"].split("?")[0],
             s["error"] or ""] for s in data["hosts"]]
    console.print(table(f"cluster {data['cluster']}", ["host", "state", "hostname",
                                                       "running VMs", "uri", "error"], rows))


@app.command()
def show(host: HostArg, json_out: JsonOpt = False) -> None:
    """One host: its entry in the cluster and connection state."""
    data = get(f"/v1/hosts/{_path_name(host)}")
    if json_out:
        emit_json(data)
        return
    for k, v in data.items():
        console.print(f"[bold]{k:12}[/] {v}", highlight=False)


def _path_name(host: str) -> str:
    """A host name as it may appear in an API path (a clear error before asking)."""
    import re

    from ahvlite.spec.cluster import NAME

    if not re.fullmatch(NAME, host):
        raise InvalidSpec("host", host, "a host name: letters, digits, '_', '.', '-'")
    return host


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
          json_out: JsonOpt = False,
          serial: Annotated[bool, typer.Option(
              "--serial", help="One host after another (default: in parallel).")] = False,
          ) -> None:
    """Facts from libvirt (CPU, NUMA, memory, PCI, pools) and SSH (IOMMU, vfio, OVS),
    gathered by a controller."""
    from ahvlite.spec.facts import HostFacts

    t0 = time.monotonic()
    with progress(not json_out, "gathering facts"):
        if host:
            raw = [get(f"/v1/hosts/{_path_name(host)}/facts")]
        else:
            raw = get("/v1/facts", serial=serial or None)
    if json_out:
        emit_json(raw)
        return
    for f in raw:
        _render_facts(HostFacts.model_validate(f))
    err_console.print(f"{len(raw)} host(s) in {time.monotonic() - t0:.2f} s")


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
    ssh_port: Annotated[int, typer.Option("--ssh-port", help="SSH port.")] = 22,
    key: Annotated[str | None, typer.Option(
        "--key", help="SSH private key ON THE CONTROLLERS (default: their own, "
                      "/etc/ahvlite/ssh/id_ed25519).")] = None,
    known_hosts: Annotated[str | None, typer.Option(
        "--known-hosts", help="known_hosts ON THE CONTROLLERS that vouches for the host "
                              "key (default: /etc/ahvlite/ssh/known_hosts).")] = None,
    trust_on_first_use: Annotated[bool, typer.Option(
        "--trust-on-first-use", help="Record an unknown SSH host key (in the leader's "
                                     "known_hosts) instead of refusing.")] = False,
    ovsdb: Annotated[str | None, typer.Option(
        "--ovsdb", help="The host's OVSDB, ssl:ADDR:6640 (the controllers connect with "
                        "their own certificate from /etc/pki).")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="KEY=VALUE label for the host (repeatable).")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse a host that would lower the cluster CPU level.")] = False,
    json_out: JsonOpt = False,
    wait: WaitOpt = True,
) -> None:
    """Add a host after the leader checked that libvirt (and SSH, if given) answer.

    With a cluster CPU level stored, a host that cannot run it lowers the level (VMs
    take it at their next power cycle), or is refused with --strict.
    """
    from ahvlite.spec.uri import check_uri

    check_uri(uri, "--uri")  # before anything else: no connection to a refused URI
    params: dict[str, Any] = {"name": name, "uri": uri, "labels": _labels(label),
                              "strict": strict, "trust_on_first_use": trust_on_first_use}
    for k, v in (("ssh", ssh), ("key", key), ("known_hosts", known_hosts), ("ovsdb", ovsdb)):
        if v is not None:
            params[k] = v
    if ssh_port != 22:
        params["ssh_port"] = ssh_port
    done = run_task("host.add", params, json_out=json_out, wait=wait, title=f"adding {name}")
    if done is None:
        return
    h = {k: v for k, v in done.items() if k != "cluster"}
    if json_out:
        emit_json(h)
        return
    console.print(f"added {name} ({uri}) to cluster {done['cluster']}", highlight=False)
    level = done["cpu_level"]
    if level["action"] == "lower" and level["level"] is not None:
        lacks = ", ".join(level["missing"]) or "features of the old level"
        console.print(f"[yellow]cluster CPU level lowered[/] to {level['level']['model']} "
                      f"({name} lacks {lacks})", highlight=False)
        for vm in level["next_power_cycle"]:
            console.print(f"{vm}: takes effect at next power cycle", highlight=False)
    elif level["action"] == "keep" and level["level"] is not None:
        console.print(f"{name} runs the cluster CPU level {level['level']['model']}; unchanged",
                      highlight=False)


@app.command()
def remove(name: HostArg,
           force: Annotated[bool, typer.Option("--force", help="Even if unreachable.")] = False,
           json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Remove a host from the cluster (refused while VMs run there)."""
    done = run_task("host.remove", {"name": name, "force": force}, json_out=json_out,
                    wait=wait, title=f"removing {name}")
    if done is None:
        return
    if json_out:
        emit_json({"removed": name})
    else:
        console.print(f"removed {name} from cluster {done['cluster']}", highlight=False)
