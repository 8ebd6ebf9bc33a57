"""``ahvlite agent``: the host agent (HA fencing) of one host."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ahvlite.cli.context import ENV_VAR, ClusterOpt
from ahvlite.cli.controller import HostOpt, StoreOpt, host_name, store_url

app = typer.Typer(no_args_is_help=True, help="The host agent: keeps this host's protected "
                  "VMs only while it holds its lease, and feeds the host's watchdog.")


@app.command()
def run(
    store: StoreOpt = None,
    host: HostOpt = None,
    libvirt_uri: Annotated[str, typer.Option(
        "--libvirt-uri", envvar="AHVLITE_LIBVIRT_URI",
        help="This host's own libvirt.")] = "qemu:///system",
    watchdog: Annotated[str, typer.Option(
        "--watchdog", envvar="AHVLITE_WATCHDOG", help="/dev/watchdog (softdog or "
        "hardware), or unix:PATH (the lab's watchdog process).")] = "/dev/watchdog",
    cluster: ClusterOpt = None,
) -> None:
    """Run the agent in the foreground until SIGTERM/SIGINT (every option may come from
    the environment, as the systemd unit gives it: /etc/ahvlite/controller.env)."""
    from ahvlite.controller.wiring import AgentConfig, run_agent

    name = host_name(host)
    path = cluster or (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else None)
    run_agent(AgentConfig(store=store_url(store), host=name, libvirt_uri=libvirt_uri,
                          watchdog=watchdog, cluster_file=path))
