"""The cluster file: which hosts form the cluster and how to reach them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ahvlite.errors import InvalidSpec, NotFound
from ahvlite.spec.errors import build
from ahvlite.spec.network import HostNetworkSpec, NetworkSpec, OvsdbSpec
from ahvlite.spec.storage import STORAGE_KINDS, IscsiSpec, PoolSpec, StorageKind
from ahvlite.spec.uri import check_uri

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class SshSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str
    user: str = "root"
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    key: Path | None = None
    known_hosts: Path | None = None


class HostSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=NAME)]
    uri: str
    ssh: SshSpec | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    ovsdb: OvsdbSpec | None = None  # how `ahvlite net` reaches this host's OVSDB
    network: HostNetworkSpec | None = None  # per-host bridges / virbr0

    @field_validator("uri", mode="before")
    @classmethod
    def _uri(cls, value: object) -> object:
        return check_uri(value, "host.uri").uri


class ClusterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=NAME)]
    hosts: list[HostSpec] = Field(default_factory=list)
    shared_pool: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    network: NetworkSpec = Field(default_factory=NetworkSpec)  # cluster-wide defaults
    # How every host gets the shared pool (the playbook mounts and defines it), and
    # whether QEMU opens its files (dir) or reaches them over iSCSI (spec/storage.py).
    pool: PoolSpec | None = None
    storage: StorageKind = "dir"
    iscsi: IscsiSpec | None = None
    # Where the cluster's documents live (a cluster.state.ClusterState over the store),
    # and the file this spec was read from, if any. Not part of the spec itself.
    _state: Any = PrivateAttr(default=None)
    _source: Path | None = PrivateAttr(default=None)

    @field_validator("storage", mode="before")
    @classmethod
    def _storage(cls, value: object) -> object:
        if value not in STORAGE_KINDS:
            raise InvalidSpec("storage", value, f"one of {', '.join(STORAGE_KINDS)}")
        return value

    @model_validator(mode="after")
    def _storage_needs(self) -> ClusterSpec:
        if self.storage == "iscsi" and not self.shared_pool:
            raise InvalidSpec("storage", "iscsi", "a cluster with a shared_pool (the "
                              "targets serve its volumes)")
        names = {h.name for h in self.hosts}
        for host in (self.iscsi.portals if self.iscsi else {}):
            if host not in names:
                raise InvalidSpec("iscsi.portals", host, f"a host of the cluster "
                                  f"({', '.join(sorted(names)) or 'none'})")
        return self

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def state(self) -> Any:
        """The cluster's documents (maintenance, rules, settings, templates ...)."""
        if self._state is None:
            raise NotFound(f"cluster {self.name!r} has no store attached",
                           hint="read the cluster from the store (or its cluster file)")
        return self._state

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise NotFound(f"host {name!r} is not in cluster {self.name!r}",
                       hint="`ahvlite host list` shows the hosts")


def load_cluster(path: Path) -> ClusterSpec:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(f"cluster file {path} does not exist",
                       hint="pass --cluster PATH or set AHVLITE_CLUSTER") from None
    except IsADirectoryError:
        raise InvalidSpec("cluster file", str(path), "a file, not a directory") from None
    except UnicodeDecodeError as exc:
        raise InvalidSpec("cluster file", str(path),
                          f"UTF-8 text (byte {exc.start} is not: a binary file?)") from None
    except OSError as exc:
        raise InvalidSpec("cluster file", str(path),
                          f"a readable file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        where = " ".join(str(exc).split())  # pyyaml's message spans lines
        raise InvalidSpec("cluster file", str(path), f"YAML that parses ({where})") from None
    except RecursionError:
        raise InvalidSpec("cluster file", str(path), "YAML nested less deeply") from None
    if not isinstance(raw, dict):
        raise InvalidSpec("cluster file", str(path), "a YAML mapping with name and hosts")
    spec = build(ClusterSpec, **raw)
    spec._source = path.resolve()
    return spec
