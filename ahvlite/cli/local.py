"""``ahvlite local``: this machine as a one-host cluster (controller on SQLite), so a
newcomer's first command works without ZooKeeper or a cluster file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ahvlite.cli.output import console, emit_json

app = typer.Typer(no_args_is_help=True,
                  help="This machine as a one-host cluster: up, status, down.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _default_dir() -> Path:
    from ahvlite.controller.local import DEFAULT_DIR

    return DEFAULT_DIR


def _client_config(path: Path | None) -> Path:
    from ahvlite.controller.api.config import DEFAULT_PATH, ENV_CONFIG

    return path or Path(os.environ.get(ENV_CONFIG) or DEFAULT_PATH).expanduser()


@app.command()
def up(
    uri: Annotated[str, typer.Option(
        "--uri", help="This host's libvirt URI.")] = "qemu:///system",
    pool: Annotated[str, typer.Option(
        "--pool", help="The libvirt storage pool VM disks and images live in.")] = "default",
    listen: Annotated[str, typer.Option(
        "--listen", help="ADDR:PORT of the API (loopback unless others must reach it).")
    ] = "127.0.0.1:9440",
    directory: Annotated[Path | None, typer.Option(
        "--dir", show_default="/var/lib/ahvlite/local",
        help="Where the local controller keeps its store, keys and log.")] = None,
    client_config: Annotated[Path | None, typer.Option(
        "--client-config", show_default="$AHVLITE_CONFIG or ~/.config/ahvlite/client.yaml",
        help="Where to write the client config that points the CLI here.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a controller for this machine alone and point the CLI at it (again: the
    store and its cluster are kept, a stopped controller is started)."""
    from ahvlite.controller import local

    layout = local.LocalLayout(directory or _default_dir())
    local.parse_listen(listen)
    host = local.host_name()
    cfg = _client_config(client_config)
    local.check_client_config(cfg)  # before anything is made
    if local.running_pid(layout) is None:
        local.write_files(layout, listen, host)
    created = local.ensure_cluster(layout, host, uri, pool)
    pid = local.start(layout, listen)
    local.write_client_config(cfg, local.client_config_text(layout, listen))
    out = {"pid": pid, "api": f"https://{listen}", "host": host, "cluster_created": created,
           "client_config": str(cfg), "dir": str(layout.root), "log": str(layout.log_file)}
    if json_out:
        emit_json(out)
        return
    console.print(f"controller {pid} serves https://{listen} for host {host} "
                  f"({'new' if created else 'existing'} cluster in {layout.store})\n"
                  f"client config: {cfg}; log: {layout.log_file}\n"
                  "next: `ahvlite vm list`, `ahvlite image import`, `ahvlite vm create`",
                  highlight=False)


@app.command()
def status(directory: Annotated[Path | None, typer.Option(
        "--dir", show_default="/var/lib/ahvlite/local",
        help="The local controller's directory.")] = None,
        json_out: JsonOpt = False) -> None:
    """Whether the local controller runs and its API answers."""
    from ahvlite.controller import local
    from ahvlite.envfile import read_env_file

    layout = local.LocalLayout(directory or _default_dir())
    pid = local.running_pid(layout)
    listen = (read_env_file(layout.env_file).get("AHVLITE_API_LISTEN")
              if layout.env_file.exists() else None)
    answers = bool(listen and pid and local.api_answers(
        f"https://{listen}", layout.admin_dir / "ca.pem"))
    out = {"running": pid is not None, "pid": pid, "api": listen and f"https://{listen}",
           "answers": answers, "dir": str(layout.root)}
    if json_out:
        emit_json(out)
    elif pid is None:
        console.print(f"no local controller runs (dir {layout.root})", highlight=False)
    else:
        console.print(f"controller {pid}, API https://{listen} "
                      f"{'answers' if answers else 'does NOT answer'}", highlight=False)
    if pid is None or not answers:
        raise typer.Exit(1)


@app.command()
def down(directory: Annotated[Path | None, typer.Option(
        "--dir", show_default="/var/lib/ahvlite/local",
        help="The local controller's directory.")] = None) -> None:
    """Stop the local controller (its store, keys and VMs stay)."""
    from ahvlite.controller import local

    layout = local.LocalLayout(directory or _default_dir())
    pid = local.stop(layout)
    console.print("no local controller ran" if pid is None else f"stopped controller {pid}",
                  highlight=False)
