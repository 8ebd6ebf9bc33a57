"""``ahvlite controller``: run the controller daemon, and see who leads (through the
API)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from ahvlite.cli import api
from ahvlite.cli.output import console, emit_json, table
from ahvlite.errors import NotFound

app = typer.Typer(no_args_is_help=True, help="The controller daemon: run it, see its status.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
STORE_ENV = "AHVLITE_STORE"
CLUSTER_ENV = "AHVLITE_CLUSTER"  # cli.context's, not imported: it loads the spec models
HOST_ENV = "AHVLITE_HOST"
# A host daemon's own name (the agent, the netagent): from the unit's environment file.
HostOpt = Annotated[str | None, typer.Option(
    "--host", envvar=HOST_ENV, help="This host's name in the cluster.", show_default=False)]
StoreOpt = Annotated[str | None, typer.Option(
    "--store", envvar=STORE_ENV, show_default=False,
    help="sqlite:///PATH or zk://H:P,.../CHROOT; the ZooKeeper credential comes from the "
         "file $AHVLITE_STORE_SECRET_FILE names (USER:SECRET), TLS from the directory "
         "$AHVLITE_STORE_TLS_DIR (ca.pem, client.pem, client-key.pem).")]


def store_url(store: str | None) -> str:
    """``--store`` wins, then $AHVLITE_STORE; otherwise a clear error."""
    url = store or os.environ.get(STORE_ENV)
    if not url:
        raise NotFound("no controller store given",
                       hint=f"pass --store URL or set {STORE_ENV} "
                            "(sqlite:///var/lib/ahvlite/controller.db or zk://HOSTS/ahvlite)")
    return url


def host_name(host: str | None) -> str:
    """``--host`` (or $AHVLITE_HOST) of a host daemon, checked; otherwise a clear error."""
    from ahvlite.errors import InvalidSpec
    from ahvlite.spec.vm import check_name

    if not host:
        raise InvalidSpec("--host", None, f"this host's name (or set ${HOST_ENV})")
    return check_name("--host", host)


@app.command()
def run(
    store: StoreOpt = None,
    name: Annotated[str | None, typer.Option(
        "--name", envvar=HOST_ENV, show_default=False,
        help="Member name: this host's name in the cluster (default: the hostname).")] = None,
    session_timeout_s: Annotated[float, typer.Option(
        "--session-timeout", help="Seconds without contact before a controller counts as "
        "gone; bounds failover.", min=1, max=60)] = 3.0,
    workers: Annotated[int, typer.Option("--workers", help="Task worker threads.",
                                         min=1, max=64)] = 4,
    cluster: Annotated[Path | None, typer.Option(
        "--cluster", help=f"A legacy cluster file (default: ${CLUSTER_ENV}); without one "
        "the cluster is the store's.", show_default=False)] = None,
    stats_interval_s: Annotated[float, typer.Option(
        "--stats-interval", help="Seconds between samples of this host's stats (and the "
        "leader's reads of every host's).", min=1, max=3600)] = 10.0,
    ads_interval_s: Annotated[float, typer.Option(
        "--ads-interval", help="Seconds between ADS rounds (leader).",
        min=10, max=86400)] = 900.0,
    api_listen: Annotated[str | None, typer.Option(
        "--api-listen", envvar="AHVLITE_API_LISTEN", show_default=False,
        help="Serve the HTTPS API on ADDR:PORT (port 9440 by convention); none without it.")
    ] = None,
    api_cert: Annotated[Path | None, typer.Option(
        "--api-cert", envvar="AHVLITE_API_CERT", help="The API's server certificate (PEM).",
        show_default=False)] = None,
    api_key: Annotated[Path | None, typer.Option(
        "--api-key", envvar="AHVLITE_API_KEY", help="Its private key (PEM).",
        show_default=False)] = None,
    api_ca: Annotated[Path | None, typer.Option(
        "--api-ca", envvar="AHVLITE_API_CA", show_default=False,
        help="The cluster CA: client certificates it issued are admins.")] = None,
    api_url: Annotated[str | None, typer.Option(
        "--api-url", envvar="AHVLITE_API_URL", show_default=False,
        help="The URL others reach this API at (default https://LISTEN_ADDR:PORT).")] = None,
    api_uploads: Annotated[Path | None, typer.Option(
        "--api-uploads", envvar="AHVLITE_API_UPLOADS", show_default=False,
        help="Where the leader stages uploads (default /var/lib/ahvlite/uploads).")] = None,
    libvirt_uri: Annotated[str, typer.Option(
        "--libvirt-uri", envvar="AHVLITE_LIBVIRT_URI",
        help="This host's own libvirt: its stats are published as stats/NAME while NAME "
             "(--name) is a host of the cluster.")] = "qemu:///system",
) -> None:
    """Run a controller in the foreground until SIGTERM/SIGINT (then leave cleanly)."""
    from ahvlite.controller.api.settings import api_settings
    from ahvlite.controller.wiring import ControllerConfig, run_controller
    from ahvlite.spec.uri import check_uri

    check_uri(libvirt_uri, "--libvirt-uri")
    served = api_settings(api_listen, api_cert, api_key, api_ca, api_url, api_uploads)
    path = cluster or (Path(os.environ[CLUSTER_ENV]) if os.environ.get(CLUSTER_ENV) else None)
    run_controller(ControllerConfig(
        store=store_url(store), name=name, session_timeout_s=session_timeout_s,
        workers=workers, cluster_file=path, stats_interval_s=stats_interval_s,
        ads_interval_s=ads_interval_s, api=served, libvirt_uri=libvirt_uri))


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%H:%M:%S.%f")[:-3] + " UTC"


@app.command()
def status(json_out: JsonOpt = False) -> None:
    """The leader (name, host, pid), the members with their heartbeats, the store."""
    st = api.get("/v1/controller/status")
    if json_out:
        emit_json(st)
        return
    lead = st["leader"]
    console.print(f"store {st['store']}; leader "
                  + (f"[bold]{lead['name']}[/] on {lead['host']} pid {lead['pid']} "
                     f"(token {lead['token']})" if lead else "[red]none[/]"), highlight=False)
    rows = [[m.get("name"), m.get("host"), m.get("pid"), "yes" if m.get("leader") else "",
             _when(m.get("heartbeat_at"))] for m in st["members"]]
    console.print(table("members", ["name", "host", "pid", "leader", "heartbeat_at"], rows))
