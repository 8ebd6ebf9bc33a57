"""What one host's redirector is told: its host, every target portal, the pool.

Written by whoever sets the host up (the lab, the playbook) as a JSON file and read
by ``ahvlite storage redirector run --config FILE``. :func:`for_host` derives it from
the cluster file, so both write the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.spec.storage import IscsiSpec, split_portal
from ahvlite.storage.health import Thresholds
from ahvlite.storage.names import REDIRECTOR_ADDRESS, REDIRECTOR_PORT, TARGET_PORT, portal

# Inside each host (the lab's hosts have their own /run).
STATUS_FILE = "/run/ahvlite/storage.json"
CONFIG_FILE = "/etc/ahvlite/redirector.json"


class RedirectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str  # this host's name in the cluster
    listen: str = f"{REDIRECTOR_ADDRESS}:{REDIRECTOR_PORT}"
    targets: dict[str, str]  # host -> ADDRESS:PORT of its target
    pool_dir: str  # the shared pool's directory on this host (the targets' backing files)
    status_file: str = STATUS_FILE
    manage_target: bool = True  # reconcile this host's tgtd and do failback from it
    tgt_control_port: Annotated[int, Field(ge=0, le=65535)] = 0  # tgtd -C (0: default)
    check_interval_s: Annotated[float, Field(ge=0.05, le=60)] = 1.0
    check_timeout_s: Annotated[float, Field(ge=0.05, le=60)] = 2.0
    failback_checks: Annotated[int, Field(ge=1, le=1000)] = 3

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(interval_s=self.check_interval_s, timeout_s=self.check_timeout_s,
                          rise=self.failback_checks)

    def portal_of(self, host: str) -> tuple[str, int]:
        return split_portal(self.targets[host])

    @property
    def initiator_addresses(self) -> list[str]:
        """Who may log in to a target: the hosts (their QEMUs and redirectors connect
        from the address their own target listens on)."""
        return sorted({split_portal(p)[0] for p in self.targets.values()})

    @property
    def host_of_address(self) -> dict[str, str]:
        return {split_portal(p)[0]: h for h, p in self.targets.items()}


def target_portals(cluster: ClusterSpec) -> dict[str, str]:
    iscsi = cluster.iscsi or IscsiSpec()
    out = {}
    for h in cluster.hosts:
        given = iscsi.portals.get(h.name)
        if given is not None:
            addr, port = split_portal(given)
            out[h.name] = portal(addr, port)
        else:
            out[h.name] = portal(_address_of(h), TARGET_PORT)
    return out


def _address_of(h: HostSpec) -> str:
    if h.ssh is None:
        raise InvalidSpec(f"iscsi.portals.{h.name}", None,
                          "an ADDRESS[:PORT] where the host's target listens (the host "
                          "has no ssh address to take it from)")
    return h.ssh.host


def for_host(cluster: ClusterSpec, host: str, pool_dir: str, *,
             status_file: str = STATUS_FILE) -> RedirectorConfig:
    cluster.host(host)
    iscsi = cluster.iscsi or IscsiSpec()
    return RedirectorConfig(host=host, targets=target_portals(cluster), pool_dir=pool_dir,
                            status_file=status_file, check_interval_s=iscsi.check_interval_s,
                            check_timeout_s=iscsi.check_timeout_s,
                            failback_checks=iscsi.failback_checks)


def load(path: Path) -> RedirectorConfig:
    try:
        raw = json.loads(path.read_text())
        cfg = RedirectorConfig.model_validate(raw)
    except FileNotFoundError:
        raise InvalidSpec("config", str(path), "an existing redirector config file") from None
    except (OSError, ValueError, ValidationError) as exc:
        detail = str(exc).splitlines()[0][:300]
        raise InvalidSpec("config", str(path), f"a redirector config ({detail})") from None
    if cfg.host not in cfg.targets:
        raise InvalidSpec("config.host", cfg.host, f"one of the target hosts "
                          f"({', '.join(sorted(cfg.targets))})")
    for h, p in cfg.targets.items():
        try:
            split_portal(p)
        except ValueError as exc:
            raise InvalidSpec(f"config.targets.{h}", p, str(exc)) from None
    return cfg


def dump(cfg: RedirectorConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
