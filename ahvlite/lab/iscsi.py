"""The iSCSI path in a lab (``lab up --storage iscsi``): on every host a tgtd (the
stand-in for the CVM's Stargate, role ``storage``) serving the shared directory's
iSCSI volumes, and the redirector on 127.0.0.1:3261 (role ``redirector``).

tgtd runs in the host's namespaces: its control socket is ``/run/tgtd/socket.0`` of
the host's own /run, its portal the host's management address. It ignores SIGTERM,
so the drill ``lab daemon stop HOST storage`` kills it outright, which is what a dying
storage service looks like to its initiators. Started again, it is empty until that
host's redirector has exported the pool's volumes to it again.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ahvlite.clock import wait_until
from ahvlite.errors import MissingDependency, OperationTimeout
from ahvlite.lab.layout import HostLayout, LabLayout
from ahvlite.lab.prereqs import find_program
from ahvlite.lab.services import inside, supervised
from ahvlite.spec.cluster import load_cluster
from ahvlite.storage import config
from ahvlite.storage.names import TARGET_PORT

STORAGE_ROLE = "storage"
REDIRECTOR_ROLE = "redirector"
# The lab checks twice a second, so drills and tests see health change quickly.
LAB_CHECK_INTERVAL_S = 0.5
# Debian's qemu-block-extra: QEMU's own iSCSI initiator (libiscsi).
QEMU_ISCSI_MODULE = "/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so"

Start = Callable[[HostLayout, str, list[str]], None]


def config_path(host: HostLayout) -> Path:
    """The host's /etc/ahvlite/redirector.json, from the root namespace: the
    redirector runs inside the host and reads its own /etc, as on a real host (the
    lab's directory is hidden by the host's private /var/lib/ahvlite)."""
    return inside(host, Path(config.CONFIG_FILE))


def status_path(host: HostLayout) -> Path:
    """The redirector's status file (its /run/ahvlite/storage.json) from the root ns."""
    return host.run_dir / Path(config.STATUS_FILE).relative_to("/run")


def tgtd_argv(host: HostLayout) -> list[str]:
    return ["tgtd", "-f", "--iscsi", f"portal={host.ip}:{TARGET_PORT}"]


def redirector_argv(host: HostLayout) -> list[str]:
    return supervised([sys.executable, "-m", "ahvlite.cli.main", "storage", "redirector",
                       "run", "--config", config.CONFIG_FILE])


def write_configs(layout: LabLayout) -> None:
    cluster = load_cluster(layout.cluster_file)
    for host in layout.hosts:
        cfg = config.for_host(cluster, host.name, str(layout.shared_dir))
        cfg = cfg.model_copy(update={"check_interval_s": LAB_CHECK_INTERVAL_S,
                                     "check_timeout_s": 1.0})
        path = config_path(host)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config.dump(cfg))


def start_storage(layout: LabLayout, *, start: Start, report: Callable[[str], None],
                  timeout_s: float = 120) -> None:
    """tgtd and the redirector on every host; wait until every redirector sees every
    target healthy."""
    report("iSCSI path: tgtd and the redirector on every host")
    for program, package in (("tgtd", "tgt"), ("tgtadm", "tgt")):
        if find_program(program) is None:
            raise MissingDependency(f"{program} is not installed: --storage iscsi needs it",
                                    hint=f"apt-get install {package} qemu-block-extra")
    if not Path(QEMU_ISCSI_MODULE).exists():
        raise MissingDependency("QEMU has no iSCSI block driver here",
                                hint="apt-get install qemu-block-extra")
    write_configs(layout)
    for host in layout.hosts:
        start(host, STORAGE_ROLE, tgtd_argv(host))
    for host in layout.hosts:
        _wait_for(lambda h=host: (h.run_dir / "tgtd" / "socket.0").exists(),  # type: ignore[misc]
                  f"{host.name}: tgtd's control socket", 20)
        start(host, REDIRECTOR_ROLE, redirector_argv(host))
    try:
        _wait_for(lambda: all(all_healthy(read_status(h)) for h in layout.hosts),
                  "every redirector to see every target healthy", timeout_s)
    except OperationTimeout as exc:
        raise OperationTimeout(f"{exc.message}: {_unhealthy(layout)}", hint=exc.hint) from None


def _unhealthy(layout: LabLayout) -> str:
    """What each redirector reported last, for the error of a wait that ran out."""
    parts = []
    for h in layout.hosts:
        status = read_status(h)
        if status is None:
            parts.append(f"{h.name}: no status written")
            continue
        local = status.get("local_target") or {}
        bad = [f"{t.get('host')}={t.get('state')}"
               for t in status.get("targets") or [] if t.get("state") != "healthy"]
        if not local.get("health_target"):
            bad.insert(0, "no local health target")
        parts.append(f"{h.name}: {', '.join(bad) or 'healthy'}")
    return "; ".join(parts)


def read_status(host: HostLayout) -> dict[str, Any] | None:
    try:
        raw = json.loads(status_path(host).read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def all_healthy(status: dict[str, Any] | None) -> bool:
    if not status:
        return False
    local = status.get("local_target") or {}
    return bool(local.get("health_target")) and all(
        t.get("state") == "healthy" for t in status.get("targets") or [])


def _wait_for(check: Callable[[], bool], what: str, timeout_s: float) -> None:
    if not wait_until(check, timeout_s=timeout_s, interval_s=0.2):
        raise OperationTimeout(f"waited {timeout_s:g} s for {what}",
                               hint="see the host's logs/storage.log and "
                                    "logs/redirector.log in the lab's state dir")
