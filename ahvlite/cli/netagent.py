"""``ahvlite netagent``: the DHCP data plane of one host (managed networks)."""

from __future__ import annotations

from typing import Annotated

import typer

from ahvlite.cli.controller import HostOpt, StoreOpt, host_name, store_url

app = typer.Typer(no_args_is_help=True, help="The host's DHCP data plane: a dnsmasq per "
                  "managed network and the OpenFlow rules on its bridges, kept as the "
                  "store's IPAM allocations say.")


@app.command()
def run(
    store: StoreOpt = None,
    host: HostOpt = None,
    ovsdb: Annotated[str, typer.Option(
        "--ovsdb", envvar="AHVLITE_OVSDB", help="This host's own OVSDB (a unix: socket).")
    ] = "unix:/run/openvswitch/db.sock",
) -> None:
    """Run the agent in the foreground until SIGTERM/SIGINT (every option may come from
    the environment, as the systemd unit gives it: /etc/ahvlite/controller.env)."""
    from ahvlite.controller.wiring import NetAgentConfig, run_netagent
    from ahvlite.errors import InvalidSpec

    name = host_name(host)
    if not ovsdb.startswith("unix:/"):
        raise InvalidSpec("--ovsdb", ovsdb, "this host's own OVSDB socket, unix:/PATH")
    run_netagent(NetAgentConfig(store=store_url(store), host=name, ovsdb=ovsdb))
