"""``ahvlite controller``: run the controller daemon, and see who leads."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ahvlite.cli.context import ENV_VAR, ClusterOpt
from ahvlite.cli.output import console, emit_json, table
from ahvlite.errors import NotFound

app = typer.Typer(no_args_is_help=True, help="The controller daemon: run it, see its status.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
STORE_ENV = "AHVLITE_STORE"
StoreOpt = Annotated[str | None, typer.Option(
    "--store", help=f"sqlite:///PATH or zk://[USER:SECRET@]H:P,.../CHROOT (default ${STORE_ENV}).",
    show_default=False)]


def store_url(store: str | None) -> str:
    """``--store`` wins, then $AHVLITE_STORE; otherwise a clear error."""
    url = store or os.environ.get(STORE_ENV)
    if not url:
        raise NotFound("no controller store given",
                       hint=f"pass --store URL or set {STORE_ENV} "
                            "(sqlite:///var/lib/ahvlite/controller.db or zk://HOSTS/ahvlite)")
    return url


@app.command()
def run(
    store: StoreOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Member name (default: hostname).",
                                             show_default=False)] = None,
    session_timeout_s: Annotated[float, typer.Option(
        "--session-timeout", help="Seconds without contact before a controller counts as "
        "gone; bounds failover.", min=1, max=60)] = 3.0,
    workers: Annotated[int, typer.Option("--workers", help="Task worker threads.",
                                         min=1, max=64)] = 4,
    cluster: ClusterOpt = None,
    stats_interval_s: Annotated[float, typer.Option(
        "--stats-interval", help="Seconds between stats rounds (leader, with a cluster file).",
        min=1, max=3600)] = 10.0,
    host_agent: Annotated[bool, typer.Option(
        "--host-agent", help="Also be this host's HA agent: power off its protected VMs "
        "when the store stays unreachable longer than the HA isolation timeout.")] = False,
    libvirt_uri: Annotated[str, typer.Option(
        "--libvirt-uri", help="This host's libvirt, for --host-agent.")] = "qemu:///system",
    ads_interval_s: Annotated[float, typer.Option(
        "--ads-interval", help="Seconds between ADS rounds (leader, with a cluster file).",
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
) -> None:
    """Run a controller in the foreground until SIGTERM/SIGINT (then leave cleanly)."""
    from ahvlite.controller.coord import open_store
    from ahvlite.controller.daemon import Controller, Identity
    from ahvlite.controller.kinds import registry

    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # `kill -USR1 PID` writes every thread's stack to the log: how to see a stuck loop.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    faulthandler.enable(all_threads=True)  # a crash in a C library leaves its stacks too
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from ahvlite.controller.api.settings import api_settings

    api = api_settings(api_listen, api_cert, api_key, api_ca, api_url, api_uploads)
    coord = open_store(store_url(store), session_timeout_s=session_timeout_s)
    services = None
    cluster_name = None
    path = cluster or (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else None)
    if path is not None:
        from ahvlite.controller.hostmon import HostMonitor
        from ahvlite.spec.cluster import load_cluster
        from ahvlite.virt.hostconn import HostConnection

        spec = load_cluster(path)
        cluster_name = spec.name

        from ahvlite.cluster.adsinput import load_rules
        from ahvlite.cluster.schedulable import unschedulable_hosts
        from ahvlite.controller.ha.adsplace import ads_place
        from ahvlite.controller.ha.config import settings_loader
        from ahvlite.controller.ha.service import HaService

        ha_settings = settings_loader(path)

        def services() -> list[Any]:
            # Short keepalive: a silent host's libvirt link drops in ~4-6 s (HA's
            # first signal); HA also needs its controller gone before acting.
            links = [HostConnection(h.name, h.uri, keepalive_interval_s=2, keepalive_count=2)
                     for h in spec.hosts]
            # Maintenance is cluster state beside the cluster file, written by `host
            # maintenance`; the controller reads the same documents (no second copy).
            def closed() -> set[str]:
                return unschedulable_hosts(path)
            monitor = HostMonitor(coord, links, interval_s=stats_interval_s,  # type: ignore[arg-type]
                                  closed=closed)
            place_fn = ads_place(lambda: load_rules(path))
            return [monitor, HaService(coord, monitor, ha_settings, place_fn=place_fn,
                                       closed=closed),
                    ads_service(coord, spec, monitor, ads_interval_s)]

    if host_agent:
        from ahvlite.controller.ha.agent import HostAgent
        from ahvlite.controller.ha.config import settings_loader as agent_settings

        HostAgent(coord, Identity.here(name).name, libvirt_uri, agent_settings(path)).start()
    kinds = registry(path)
    server, published = None, None
    if api is not None:
        from ahvlite.controller.api.settings import start_api

        server, published = start_api(api, coord, Identity.here(name).name, kinds, cluster_name)
        # Stop taking requests as soon as we are told to stop, while the controller
        # resigns: a client then goes to another controller, not to a closed store.
        threading.Thread(target=_stop_api_on, args=(stop, server), daemon=True,
                         name="api-stop").start()
    Controller(coord, Identity.here(name), kinds, workers=workers,
               leader_services=services, api_url=published).run(stop)
    if server is not None:
        server.stop()
    # We have resigned and left. A task step still sleeping in a worker thread must not
    # hold the exit (its task stays running under our token: the next leader resumes it).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _stop_api_on(stop: threading.Event, server: Any) -> None:
    stop.wait()
    server.stop()


def ads_service(coord: Any, spec: Any, monitor: Any, interval_s: float) -> Any:
    """ADS on the monitor's stats history; its moves become vm.migrate tasks."""
    from ahvlite.cluster.adsinput import records_of, snapshot
    from ahvlite.controller.adsservice import AdsService

    return AdsService(coord, lambda: snapshot(spec, records=records_of(monitor.history, spec)),
                      interval_s=interval_s, cluster_file=spec.source)


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%H:%M:%S.%f")[:-3] + " UTC"


@app.command()
def status(store: StoreOpt = None, json_out: JsonOpt = False) -> None:
    """The leader (name, host, pid), the members with their heartbeats, the store."""
    from ahvlite.controller.coord import open_store
    from ahvlite.controller.status import controller_status

    coord = open_store(store_url(store))
    try:
        st = controller_status(coord)
    finally:
        coord.close()
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
