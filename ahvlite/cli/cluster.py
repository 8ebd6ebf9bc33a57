"""``ahvlite cluster``: the cluster document (``apply -f``, ``export``) and the CPU level.

The cluster YAML is a declarative document for people and git; the cluster itself
lives in the store. ``apply`` makes the store match a file (a task the leader runs;
``--dry-run`` computes the diff here from what the API reads, changing nothing);
``export`` prints what the store holds as a file ``apply`` takes back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ahvlite.cli.api import WaitOpt, get, run_task
from ahvlite.cli.output import console, emit_json, err_console, progress, table
from ahvlite.errors import InvalidSpec, NotFound

app = typer.Typer(no_args_is_help=True,
                  help="The cluster: apply a cluster file, export it, the CPU level.")
cpu_app = typer.Typer(no_args_is_help=True,
                      help="The cluster CPU level: show, apply, set (processor compatibility).")
app.add_typer(cpu_app, name="cpu")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def read_documents(path: Path) -> dict[str, dict[str, Any]]:
    """The documents an earlier version kept beside the cluster file (``cluster-state/``,
    ``cluster-cpu.json``, ``templates/``) by store key, each a JSON object."""
    from ahvlite.cluster.legacy import legacy_documents

    out = {}
    for key, raw in legacy_documents(path).items():
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidSpec(f"{key} beside {path}", "(file)", f"JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise InvalidSpec(f"{key} beside {path}", "(file)", "a JSON object")
        out[key] = doc
    return out


def _stored() -> dict[str, Any] | None:
    try:
        return dict(get("/v1/cluster"))
    except NotFound:
        return None  # no cluster in the store yet: everything is new


def _render_diff(d: dict[str, Any], *, dry_run: bool, source: Path) -> None:
    verb = "would import" if dry_run else "imported"
    if not d["changes"]:
        console.print("spec: no changes", highlight=False)
    for c in d["changes"]:
        fields = f" ({', '.join(c['fields'])})" if c["fields"] else ""
        console.print(f"  {c['action']:6} {c['what']} {c['name']}{fields}", highlight=False)
    if d["imports"] or d["kept"]:
        console.print(f"documents beside {source}:", highlight=False, soft_wrap=True)
    if d["imports"]:
        console.print(f"  {verb} (the store did not have them): {', '.join(d['imports'])}",
                      highlight=False, soft_wrap=True)
    if d["kept"]:
        console.print("  kept as the store holds them (never overwritten): "
                      + ", ".join(d["kept"]), highlight=False, soft_wrap=True)


@app.command(name="apply")
def apply_(
    file: Annotated[Path, typer.Option("-f", "--file", help="The cluster file (YAML).")],
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show what would change (hosts, networks, pools, labels, documents "
                          "to import); change nothing.")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Refuse new hosts that would lower the cluster CPU level.")] = False,
    json_out: JsonOpt = False,
    wait: WaitOpt = True,
) -> None:
    """Make the cluster match FILE (idempotent). New hosts are checked as by `host add`,
    removed ones as by `host remove`. The documents an earlier version kept beside the
    file (cluster-state/, cluster-cpu.json, templates/) are imported where the store does
    not have them yet; the store's own are never overwritten."""
    from ahvlite.spec.cluster import load_cluster

    spec = load_cluster(file)  # a bad file: one line, nothing sent
    documents = read_documents(file)
    want = spec.model_dump(mode="json", exclude_none=True)
    if dry_run:
        from ahvlite.spec.clusterdiff import diff

        stored = _stored()
        have = set(get("/v1/cluster/documents")["keys"]) if stored is not None else set()
        if stored is not None and stored.get("name") != spec.name:
            err_console.print(f"[yellow]warning:[/] the store holds cluster "
                              f"{stored.get('name')!r}; apply refuses cluster {spec.name!r}",
                              highlight=False)
        d = diff(stored, want, list(documents), have).to_dict()
        if json_out:
            emit_json({"cluster": spec.name, "dry_run": True, **d})
        else:
            console.print(f"cluster {spec.name} (dry run, nothing changed):", highlight=False)
            _render_diff(d, dry_run=True, source=file)
        return
    done = run_task("cluster.apply", {"spec": want, "documents": documents, "strict": strict},
                    json_out=json_out, wait=wait, title=f"applying {file}")
    if done is None:
        return
    if json_out:
        emit_json(done)
        return
    d = {**done["diff"], "imports": done["imported"], "kept": done["kept"]}
    console.print(f"cluster {done['cluster']}: "
                  + ("applied" if done["spec_written"] else "spec unchanged"), highlight=False)
    _render_diff(d, dry_run=False, source=file)
    level = done.get("cpu_level")
    if level and level["action"] == "lower":
        console.print(f"[yellow]cluster CPU level lowered[/] to {level['level']['model']} "
                      f"(new hosts lack {', '.join(level['missing'])})", highlight=False)


@app.command()
def export(out: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Write to FILE (default: print).")] = None,
           json_out: JsonOpt = False) -> None:
    """The stored cluster spec as a cluster file (`cluster apply -f` takes it back)."""
    from ahvlite.spec.cluster import ClusterSpec

    data = get("/v1/cluster")
    text = (json.dumps(data, indent=2) + "\n" if json_out
            else ClusterSpec.model_validate(data).dump_yaml())
    if out is None:
        typer.echo(text, nl=False)
        return
    _write_file(out, text)
    err_console.print(f"wrote {out}", highlight=False)


def _write_file(path: Path, text: str) -> None:
    """Whole or not at all: a temporary file of our own beside it, then renamed."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.resolve().parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cpu_line(d: dict[str, Any]) -> str:
    feats = " ".join(f"+{f}" for f in d.get("features", []))
    off = " ".join(f"-{f}" for f in d.get("disabled", []))
    return " ".join(x for x in (str(d.get("model")), feats, off) if x)


@cpu_app.command()
def show(json_out: JsonOpt = False) -> None:
    """Each host's CPU, the baseline of all hosts, the stored level, what hosts give up."""
    with progress(not json_out, "reading host CPUs"):
        data = get("/v1/cpu")
    name = data.pop("cluster")
    if json_out:
        emit_json(data)
        return
    rows = [[h["name"], h["vendor"], h["model"], h["domain_type"], h["machine"],
             ", ".join(data["given_up"].get(h["name"], [])) or "nothing"]
            for h in data["hosts"]]
    console.print(table(f"CPUs of {name}", ["host", "vendor", "host-model",
                                            "domain type", "machine", "gives up"], rows))
    console.print(f"[bold]baseline[/] {_cpu_line(data['baseline'])}", highlight=False)
    level = data["level"]
    console.print("[bold]level[/]    " + (f"{_cpu_line(level)} ({level['source']})"
                                           if level else "none stored (`cluster cpu apply`)"),
                  highlight=False)


@cpu_app.command()
def apply(json_out: JsonOpt = False, wait: WaitOpt = True,
          recompute: Annotated[bool, typer.Option(
              "--recompute", help="Replace a manual level by the baseline.")] = False,
          ) -> None:
    """Store the baseline as the level and redefine every VM's CPU to it."""
    data = run_task("cluster.cpu.apply", {"recompute": recompute}, json_out=json_out,
                    wait=wait, title="applying the CPU level")
    if data is None:
        return
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
         json_out: JsonOpt = False, wait: WaitOpt = True) -> None:
    """Set the level by hand; refused if any host cannot run MODEL. `apply` uses it."""
    data = run_task("cluster.cpu.set", {"model": model}, json_out=json_out, wait=wait,
                    title=f"setting the CPU level to {model}")
    if data is None:
        return
    if json_out:
        emit_json(data)
        return
    console.print(f"level set to {model} (manual); `ahvlite cluster cpu apply` "
                  "redefines the VMs", highlight=False)
