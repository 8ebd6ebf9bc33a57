"""Storage in the cluster file: the shared pool's kind, and the iSCSI path.

```yaml
shared_pool: ahvlite-shared        # the libvirt pool every host has
pool:                              # how each host gets it (the playbook defines it)
  kind: netfs                      # NFS, mounted by libvirt; or dir (already shared)
  path: /var/lib/ahvlite/shared    # where it is on every host
  server: 192.0.2.10               # netfs only
  export: /srv/ahvlite
storage: iscsi                     # dir (QEMU opens the pool's files) or iscsi
iscsi:                             # optional; the defaults fit most clusters
  portals: {h1: "10.0.0.11:3260"}  # where each host's target listens (default: its ssh address)
  check_interval_s: 1
  failback_checks: 3
```
"""

from __future__ import annotations

import ipaddress
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ahvlite.errors import InvalidSpec

PoolKind = Literal["dir", "netfs"]
POOL_KINDS: tuple[str, ...] = ("dir", "netfs")
StorageKind = Literal["dir", "iscsi"]
STORAGE_KINDS: tuple[str, ...] = ("dir", "iscsi")
TARGET_PORT = 3260  # iSCSI's port, where every host's target listens
_HOSTNAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")


def _absolute(field: str, value: str) -> str:
    p = PurePosixPath(value)
    if not p.is_absolute() or ".." in p.parts or "\0" in value or "\n" in value:
        raise InvalidSpec(field, value, "an absolute path without '..'")
    return str(p)


def _server(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not value or len(value) > 253 or not set(value) <= _HOSTNAME_CHARS \
            or value.startswith(("-", ".")):
        raise InvalidSpec("pool.server", value, "an IP address or a DNS name")
    return value


class PoolSpec(BaseModel):
    """The shared pool on every host: a libvirt ``dir`` or ``netfs`` (NFS) pool."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: PoolKind = "netfs"
    path: str = "/var/lib/ahvlite/shared"
    server: str | None = None
    export: str | None = None
    # virtlockd's leases live here unless given: on the shared storage, so two hosts
    # can never open one disk (HA's guarantee).
    lockspace: str | None = None

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: object) -> object:
        if value not in POOL_KINDS:
            raise InvalidSpec("pool.kind", value, f"one of {', '.join(POOL_KINDS)}")
        return value

    @field_validator("path", "export", "lockspace")
    @classmethod
    def _paths(cls, value: str | None, info: object) -> str | None:
        name = getattr(info, "field_name", "path")
        return None if value is None else _absolute(f"pool.{name}", value)

    @field_validator("server")
    @classmethod
    def _srv(cls, value: str | None) -> str | None:
        return None if value is None else _server(value)

    @model_validator(mode="after")
    def _netfs_source(self) -> PoolSpec:
        if self.kind == "netfs" and (self.server is None or self.export is None):
            raise InvalidSpec("pool", self.model_dump(exclude_none=True),
                              "a netfs pool names its NFS server and export "
                              "(pool.server, pool.export)")
        if self.kind == "dir" and (self.server or self.export):
            raise InvalidSpec("pool.kind", "dir", "netfs when pool.server/export are set")
        return self

    @property
    def lockspace_dir(self) -> str:
        return self.lockspace or f"{self.path.rstrip('/')}/.lockspace"


class IscsiSpec(BaseModel):
    """Settings of the iSCSI path (``storage: iscsi``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    portals: dict[str, str] = Field(default_factory=dict)  # host -> ADDRESS[:PORT]
    check_interval_s: Annotated[float, Field(ge=0.2, le=60)] = 1.0
    check_timeout_s: Annotated[float, Field(ge=0.2, le=60)] = 2.0
    failback_checks: Annotated[int, Field(ge=1, le=1000)] = 3

    @field_validator("portals")
    @classmethod
    def _portals(cls, value: dict[str, str]) -> dict[str, str]:
        for host, text in value.items():
            try:
                addr, _ = split_portal(text)
                ipaddress.ip_address(addr)
            except ValueError as exc:
                raise InvalidSpec(f"iscsi.portals.{host}", text,
                                  f"an IP address with an optional port ({exc})") from None
        return value


def split_portal(text: str, default_port: int = TARGET_PORT) -> tuple[str, int]:
    """``ADDR[:PORT]`` or ``[V6][:PORT]`` -> (address, port); ValueError if malformed."""
    text = text.strip()
    if text.startswith("["):
        addr, sep, rest = text[1:].partition("]")
        if not sep or not addr:
            raise ValueError(f"{text!r}: an IPv6 portal needs [ADDRESS]")
        port = rest.removeprefix(":") if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [ADDRESS]:PORT")
    else:
        addr, _, port = text.partition(":")
        if not addr:
            raise ValueError(f"{text!r}: no address")
    if port == "":
        return addr, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be 1-65535")
    return addr, int(port)
