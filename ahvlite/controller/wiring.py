"""The daemons' wiring: a controller (leader election, tasks, and the leader's
services), a host agent (HA fencing) and a host's DHCP data plane agent, each from its
configuration. The CLI only parses options and calls :func:`run_controller` /
:func:`run_agent` / :func:`run_netagent`."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ahvlite.cluster.legacy import open_cluster_file
from ahvlite.cluster.state import ClusterState
from ahvlite.controller.adslive import STATS_MAX_AGE_S
from ahvlite.controller.clusterview import ClusterView
from ahvlite.controller.coord import open_store, parse_store_url
from ahvlite.controller.coord.url import refuse_default_auth
from ahvlite.controller.daemon import Controller, Identity
from ahvlite.controller.kinds import registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControllerConfig:
    store: str
    name: str | None = None
    session_timeout_s: float = 3.0
    workers: int = 4
    cluster_file: Path | None = None
    stats_interval_s: float = 10.0
    ads_interval_s: float = 900.0
    api: Any = None  # controller.api.settings.ApiSettings: serve the HTTPS API
    # This controller's own host's libvirt: its stats are published as stats/NAME.
    libvirt_uri: str = "qemu:///system"


@dataclass(frozen=True)
class AgentConfig:
    store: str
    host: str
    libvirt_uri: str = "qemu:///system"
    watchdog: str = "/dev/watchdog"
    cluster_file: Path | None = None
    session_timeout_s: float = 3.0


@dataclass(frozen=True)
class NetAgentConfig:
    store: str
    host: str
    ovsdb: str = "unix:/run/openvswitch/db.sock"
    session_timeout_s: float = 3.0


def _daemon_setup() -> threading.Event:
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # `kill -USR1 PID` writes every thread's stack to the log: how to see a stuck loop.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    faulthandler.enable(all_threads=True)  # a crash in a C library leaves its stacks too
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def leader_services(coord: Any, view: ClusterView,
                    cfg: ControllerConfig) -> Callable[[], list[Any]]:
    """What only the leader runs (the stats feed, host monitor, HA, ADS), around the
    cluster's hosts as they are when it is elected (rebuilt when they change)."""
    from ahvlite.cluster import vms
    from ahvlite.cluster.adsrules import load_rules
    from ahvlite.cluster.schedulable import unschedulable_hosts
    from ahvlite.controller.ha.config import settings_loader
    from ahvlite.controller.ha.hostops import LibvirtHosts
    from ahvlite.controller.ha.service import HaService
    from ahvlite.controller.hostmon import HostMonitor
    from ahvlite.controller.hoststats import StatsFeed
    from ahvlite.sched.place import AdsRules
    from ahvlite.virt.hostconn import HostConnection

    ha_settings = settings_loader(view.state)

    def services() -> list[Any]:
        if not view.known():
            log.warning("the store holds no cluster yet: no host monitor, HA or ADS until "
                        "`ahvlite cluster apply`")
            return []
        spec = view()
        # Short keepalive: a silent host's libvirt link drops in ~4-6 s.
        links = [HostConnection(h.name, h.uri, keepalive_interval_s=2, keepalive_count=2)
                 for h in spec.hosts]

        def closed() -> set[str]:
            return unschedulable_hosts(view.state)

        feed = StatsFeed(coord, interval_s=cfg.stats_interval_s,
                         max_age_s=max(STATS_MAX_AGE_S, 3 * cfg.stats_interval_s))
        monitor = HostMonitor(coord, links, interval_s=cfg.stats_interval_s,  # type: ignore[arg-type]
                              latest=feed.latest, closed=closed)

        def render(conn: Any, host: str, vm: Any, epoch: int) -> str:
            return vms.render_on_host(conn, view(), host, vm.spec, vm.nvram_volume, epoch)

        ha = HaService(coord, lambda: [h.name for h in view().hosts],
                       LibvirtHosts(monitor, render), ha_settings,
                       strategy=AdsRules(lambda: load_rules(view.state), lenient=True),
                       closed=closed)
        return [feed, monitor, ha, ads_service(coord, view, feed, cfg.ads_interval_s)]

    return services


def ads_service(coord: Any, view: ClusterView, feed: Any, interval_s: float) -> Any:
    """ADS on the history of the stats every host's controller publishes; its plans are
    admitted by HA (guarantee mode) as a whole, its moves become vm.migrate tasks."""
    from ahvlite.cluster.adsinput import snapshot
    from ahvlite.controller.adsservice import AdsService
    from ahvlite.controller.ha.inventory import check_moves

    def problem() -> Any:
        spec = view()
        feed.refresh()
        return snapshot(spec, records=feed.records(spec))

    return AdsService(coord, problem, interval_s=interval_s,
                      admit=lambda moves: check_moves(view(), moves))


def own_stats(coord: Any, view: ClusterView, name: str, cfg: ControllerConfig) -> Any:
    """Every controller's own host: sampled from its local libvirt, published as
    ``stats/NAME`` while NAME is a host of the cluster."""
    from ahvlite.controller.hoststats import OwnStats

    def is_host(host: str) -> bool:
        return view.known() and any(h.name == host for h in view().hosts)

    def connect() -> Any:
        from ahvlite.virt.conn import open_connection  # libvirt: only once it is needed

        return open_connection(cfg.libvirt_uri)

    return OwnStats(coord, name, connect, interval_s=cfg.stats_interval_s, is_host=is_host)


def run_controller(cfg: ControllerConfig) -> None:
    """Run a controller in the foreground until SIGTERM/SIGINT (then leave cleanly)."""
    refuse_default_auth(parse_store_url(cfg.store))
    stop = _daemon_setup()
    from ahvlite.cluster import vms
    from ahvlite.virt.pool import ConnectionPool

    # Keep host connections between API reads and task steps (virt/pool.py).
    vms.use_pool(ConnectionPool())
    coord = open_store(cfg.store, session_timeout_s=cfg.session_timeout_s)
    view = ClusterView(coord, cluster_file=cfg.cluster_file)
    view.start()
    kinds = registry(view)
    name = Identity.here(cfg.name).name
    server, published = None, None
    if cfg.api is not None:
        from ahvlite.controller.api.settings import start_api

        server, published = start_api(cfg.api, coord, name, kinds, view)
        # Stop taking requests as soon as we are told to stop, while the controller
        # resigns: a client then goes to another controller, not to a closed store.
        threading.Thread(target=_stop_api_on, args=(stop, server), daemon=True,
                         name="api-stop").start()
    controller = Controller(coord, Identity.here(cfg.name), kinds, workers=cfg.workers,
                            leader_services=leader_services(coord, view, cfg),
                            api_url=published)
    view.on_hosts_changed(controller.restart_services)
    stats = own_stats(coord, view, name, cfg)
    stats.start()
    controller.run(stop)
    stats.stop()
    view.stop()
    if server is not None:
        server.stop()
    _exit_now()


def _stop_api_on(stop: threading.Event, server: Any) -> None:
    stop.wait()
    server.stop()


def run_agent(cfg: AgentConfig) -> None:
    """Run the host agent in the foreground until SIGTERM/SIGINT."""
    from ahvlite.controller.ha.agent import HostAgent, LeaseFile
    from ahvlite.controller.ha.config import settings_loader
    from ahvlite.controller.ha.localvms import LibvirtLocal
    from ahvlite.controller.ha.watchdog import open_watchdog

    refuse_default_auth(parse_store_url(cfg.store))
    stop = _daemon_setup()
    # The timings are fixed for the life of the process and published with every
    # heartbeat: the leader times this host by what this agent really runs with.
    lease_file = LeaseFile()
    # Store calls give up after 2 s: the agent's tick must go on to fence.
    coord = open_store(cfg.store, session_timeout_s=cfg.session_timeout_s, retry_s=2.0)
    state = (open_cluster_file(cfg.cluster_file).state if cfg.cluster_file
             else ClusterState(coord))
    settings = settings_loader(state)()
    agent = HostAgent(coord, cfg.host, LibvirtLocal(cfg.libvirt_uri),
                      open_watchdog(cfg.watchdog, settings.watchdog_s),
                      lease_s=settings.lease_s, heartbeat_s=settings.heartbeat_s,
                      keep_until=lease_file.load(), save_lease=lease_file.save)
    log.warning("agent %s: lease %g s, watchdog %g s (%s), heartbeat %g s", cfg.host,
                settings.lease_s, settings.watchdog_s, cfg.watchdog, settings.heartbeat_s)
    agent.start()
    stop.wait()
    agent.stop()
    coord.close()
    _exit_now()


def run_netagent(cfg: NetAgentConfig) -> None:
    """Run this host's DHCP data plane agent in the foreground until SIGTERM/SIGINT.
    Its dnsmasq responders keep running after it ends (the unit's KillMode=process):
    the next agent takes them over by their pid files."""
    from ahvlite.controller.netagent import HostPlaces, NetAgent

    refuse_default_auth(parse_store_url(cfg.store))
    stop = _daemon_setup()
    # A store call gives up after 2 s: the agent then changes nothing and tries again.
    coord = open_store(cfg.store, session_timeout_s=cfg.session_timeout_s, retry_s=2.0)
    view = ClusterView(coord)
    view.start()
    agent = NetAgent(coord, view, cfg.host, where=HostPlaces(ovsdb=cfg.ovsdb))
    log.warning("netagent %s: OVSDB %s, tick %g s, full resync every %g s", cfg.host,
                cfg.ovsdb, agent.loop.period_s, agent.resync_s)
    agent.start()
    stop.wait()
    agent.stop()
    view.stop()
    coord.close()
    _exit_now()


def _exit_now() -> None:
    # A task step still sleeping in a worker thread must not hold the exit (its task
    # stays running under our token: the next leader resumes it).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
