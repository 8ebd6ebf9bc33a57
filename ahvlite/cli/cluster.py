"""``ahvlite cluster``: cluster-wide settings; today the CPU level (``cluster cpu``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ahvlite.cli.context import ClusterOpt, load
from ahvlite.cli.output import console, emit_json, progress, table
from ahvlite.cluster import cpulevel, cpustore

app = typer.Typer(no_args_is_help=True, help="Cluster-wide settings: cpu.")
cpu_app = typer.Typer(no_args_is_help=True,
                      help="The cluster CPU level: show, apply, set (processor compatibility).")
app.add_typer(cpu_app, name="cpu")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _cpu_line(d: dict[str, Any]) -> str:
    feats = " ".join(f"+{f}" for f in d.get("features", []))
    off = " ".join(f"-{f}" for f in d.get("disabled", []))
    return " ".join(x for x in (str(d.get("model")), feats, off) if x)


@cpu_app.command()
def show(cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Each host's CPU, the baseline of all hosts, the stored level, what hosts give up."""
    _path, spec = load(cluster)
    with progress(not json_out, "reading host CPUs"):
        data = cpulevel.show(spec, cpustore.store_for(spec))
    if json_out:
        emit_json(data)
        return
    rows = [[h["name"], h["vendor"], h["model"], h["domain_type"], h["machine"],
             ", ".join(data["given_up"].get(h["name"], [])) or "nothing"]
            for h in data["hosts"]]
    console.print(table(f"CPUs of {spec.name}", ["host", "vendor", "host-model",
                                                 "domain type", "machine", "gives up"],
                        rows))
    console.print(f"[bold]baseline[/] {_cpu_line(data['baseline'])}", highlight=False)
    level = data["level"]
    console.print("[bold]level[/]    " + (f"{_cpu_line(level)} ({level['source']})"
                                           if level else "none stored (`cluster cpu apply`)"),
                  highlight=False)


@cpu_app.command()
def apply(cluster: ClusterOpt = None, json_out: JsonOpt = False,
          recompute: Annotated[bool, typer.Option(
              "--recompute", help="Replace a manual level by the baseline.")] = False,
          ) -> None:
    """Store the baseline as the level and redefine every VM's CPU to it."""
    _path, spec = load(cluster)
    with progress(not json_out, "applying the CPU level"):
        data = cpulevel.apply(spec, cpustore.store_for(spec), recompute=recompute)
    if json_out:
        emit_json(data)
        return
    console.print(f"level {_cpu_line(data['level'])} ({data['level']['source']})",
                  highlight=False)
    console.print(f"redefined: {', '.join(data['redefined']) or 'none'}", highlight=False)
    for name in data["next_power_cycle"]:
        console.print(f"{name}: takes effect at next power cycle", highlight=False)


@cpu_app.command(name="set")
def set_(model: Annotated[str, typer.Argument(
        help="A libvirt CPU model (e.g. Westmere) or x86-64-v2, x86-64-v3, x86-64-v4.")],
         cluster: ClusterOpt = None, json_out: JsonOpt = False) -> None:
    """Set the level by hand; refused if any host cannot run MODEL. `apply` uses it."""
    _path, spec = load(cluster)
    data = cpulevel.set_level(spec, cpustore.store_for(spec), model)
    if json_out:
        emit_json(data)
        return
    console.print(f"level set to {model} (manual); `ahvlite cluster cpu apply` "
                  "redefines the VMs", highlight=False)
