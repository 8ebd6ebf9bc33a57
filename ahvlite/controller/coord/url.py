"""Store URLs: ``sqlite:///path/to/db`` and ``zk://[user:secret@]h1:2181,h2:2181/chroot``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ahvlite.errors import InvalidSpec

ALLOWED = "sqlite:///ABSOLUTE/PATH or zk://[USER:SECRET@]HOST:PORT[,HOST:PORT...]/CHROOT"
ENV_AUTH = "AHVLITE_ZK_AUTH"
DEFAULT_AUTH = ("ahvlite", "ahvlite")


@dataclass(frozen=True)
class SqliteUrl:
    path: Path

    def redacted(self) -> str:
        return f"sqlite://{self.path}"


@dataclass(frozen=True)
class ZkUrl:
    hosts: tuple[tuple[str, int], ...]
    chroot: str
    user: str
    secret: str

    def hosts_string(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.hosts)

    def redacted(self) -> str:
        return f"zk://{self.user}:***@{self.hosts_string()}{self.chroot}"


StoreUrl = SqliteUrl | ZkUrl


def parse_store_url(url: str, env: dict[str, str] | None = None) -> StoreUrl:
    """Parse and validate; credentials come from the URL, then $AHVLITE_ZK_AUTH."""
    env = dict(os.environ) if env is None else env
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if not path.startswith("/") or path == "/" or path.endswith("/"):
            raise InvalidSpec("store", url, ALLOWED)
        return SqliteUrl(Path(path))
    if not url.startswith("zk://"):
        raise InvalidSpec("store", url, ALLOWED)
    rest = url[len("zk://"):]
    netloc, slash, chroot = rest.partition("/")
    if not slash or not chroot or chroot.endswith("/"):
        raise InvalidSpec("store", url, ALLOWED, hint="name a chroot, e.g. zk://h1:2181/ahvlite")
    user, secret = DEFAULT_AUTH
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user, sep, secret = auth.partition(":")
        if not sep or not user or not secret:
            raise InvalidSpec("store", url, ALLOWED, hint="credentials are USER:SECRET")
    elif env.get(ENV_AUTH):
        user, sep, secret = env[ENV_AUTH].partition(":")
        if not sep or not user or not secret:
            raise InvalidSpec(ENV_AUTH, "***", "USER:SECRET")
    hosts = []
    for item in netloc.split(","):
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "2181"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidSpec("store", url, ALLOWED, hint=f"bad host:port {item!r}")
        hosts.append((host, int(port)))
    return ZkUrl(tuple(hosts), "/" + chroot, user, secret)
