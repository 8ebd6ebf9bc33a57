"""A real controller serving the HTTPS API over a real SQLite store, in this process,
for tests of the CLI as an API client: certificates from our own CA, the cluster spec
applied to the store, and the environment a CLI subprocess needs to reach it.

The controller's libvirt connections live in this process, so a cluster of
``test:///default`` hosts keeps one state for every command the CLI sends.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ahvlite.cluster.state import ClusterState
from ahvlite.controller.api.settings import ApiSettings, start_api
from ahvlite.controller.clusterview import ClusterView
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.controller.daemon import LEADER_KEY, Controller, Identity
from ahvlite.controller.kinds import registry
from ahvlite.pki import ADMINS_UNIT, CertificateAuthority, write_secret
from ahvlite.spec.cluster import ClusterSpec
from tests.clirun import ahvlite, without_settings
from tests.waiting import wait_for


@dataclass
class ApiCluster:
    dir: Path
    coord: SqliteCoordinator
    state: ClusterState
    env: dict[str, str]
    url: str
    threads: list[Any] = field(default_factory=list)

    def cli(self, *argv: str, timeout_s: float = 120,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``ahvlite ARGV`` as a client of this cluster's API."""
        return ahvlite(*argv, env=self.env, extra_env=extra_env, timeout_s=timeout_s)


def client_env(pki: Path, *urls: str) -> dict[str, str]:
    """The environment of a CLI with admin credentials for ``urls`` (nothing else)."""
    return {**without_settings(), "AHVLITE_API": ",".join(urls), "AHVLITE_CA": str(pki / "ca.pem"),
            "AHVLITE_CERT": str(pki / "admin.pem"), "AHVLITE_KEY": str(pki / "admin-key.pem"),
            "HOME": str(pki), "COLUMNS": "200"}  # no client.yaml of this machine's user


def make_pki(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.new("test cluster CA")
    (d / "ca.pem").write_bytes(ca.cert_pem)
    for name, issued in (("server", ca.issue("ctl", ips=("127.0.0.1",), server=True,
                                             client=False)),
                         ("admin", ca.issue("admin", server=False, client=True,
                                            unit=ADMINS_UNIT))):
        (d / f"{name}.pem").write_bytes(issued.cert_pem)
        write_secret(d / f"{name}-key.pem", issued.key_pem)
    return d


@contextmanager
def api_cluster(tmp: Path, spec: ClusterSpec, *, name: str = "ctl") -> Iterator[ApiCluster]:
    """A leading controller with its API on 127.0.0.1, serving ``spec``."""
    pki = make_pki(tmp / "pki")
    coord = SqliteCoordinator(tmp / "store.db", session_timeout_s=2)
    state = ClusterState(coord)
    state.write_spec(spec, None)
    view = ClusterView(coord)
    view.start()
    kinds = registry(view, drills=True)
    settings = ApiSettings("127.0.0.1", 0, pki / "server.pem", pki / "server-key.pem",
                           pki / "ca.pem", None, tmp / "uploads")
    # The API serves from the controller's own store session, as in the daemon's
    # wiring: it knows when it leads (uploads are staged on the leader).
    ctl_coord = SqliteCoordinator(tmp / "store.db", session_timeout_s=2)
    server, url = start_api(settings, ctl_coord, name, kinds, view)
    stop = threading.Event()
    ctl = Controller(ctl_coord, Identity(name, "here", os.getpid()), kinds,
                     heartbeat_s=0.2, poll_s=0.05, api_url=url)
    t = threading.Thread(target=ctl.run, args=(stop,), daemon=True, name="test-controller")
    t.start()
    try:
        assert wait_for(lambda: coord.get(LEADER_KEY), 20, 0.05), "no leader"
        yield ApiCluster(tmp, coord, state, client_env(pki, url), url)
    finally:
        stop.set()
        t.join(10)
        server.stop()
        view.stop()
        coord.close()
