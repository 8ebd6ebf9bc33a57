"""Store URLs: ``sqlite:///path/to/db`` and ``zk://[user:secret@]h1:2181,h2:2181/chroot``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ahvlite.errors import InvalidSpec

ALLOWED = "sqlite:///ABSOLUTE/PATH or zk://[USER:SECRET@]HOST:PORT[,HOST:PORT...]/CHROOT"
ENV_AUTH = "AHVLITE_ZK_AUTH"
# A file holding USER:SECRET (mode 0600): how the systemd units and the lab pass the
# secret, so it is on no command line and in no environment listing of ps.
ENV_SECRET_FILE = "AHVLITE_STORE_SECRET_FILE"
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


def redact(url: str) -> str:
    """``url`` as it may appear in a message: whatever precedes the last ``@`` of a
    zk:// URL (the credential, whatever characters it holds) becomes USER:*** or ***."""
    if not url.startswith("zk://") or "@" not in url:
        return url
    auth, _, rest = url[len("zk://"):].rpartition("@")
    user, sep, _ = auth.partition(":")
    return f"zk://{user}:***@{rest}" if sep and "/" not in user else f"zk://***@{rest}"


def refuse_default_auth(url: StoreUrl) -> None:
    """A controller must not run with the credential every ahvlite knows: whoever
    can write the store decides what the leader does on every host."""
    if isinstance(url, ZkUrl) and (url.user, url.secret) == DEFAULT_AUTH:
        raise InvalidSpec("store", url.redacted(), "a ZooKeeper credential of your own, "
                          "not the built-in default",
                          hint=f"give USER:SECRET in the URL (zk://USER:SECRET@HOSTS/CHROOT) "
                               f"or in ${ENV_AUTH}")


def parse_store_url(url: str, env: dict[str, str] | None = None) -> StoreUrl:
    """Parse and validate; credentials come from the URL, then $AHVLITE_ZK_AUTH."""
    env = dict(os.environ) if env is None else env
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if not path.startswith("/") or path == "/" or path.endswith("/"):
            raise InvalidSpec("store", redact(url), ALLOWED)
        return SqliteUrl(Path(path))
    if not url.startswith("zk://"):
        raise InvalidSpec("store", redact(url), ALLOWED)
    rest = url[len("zk://"):]
    netloc, slash, chroot = rest.partition("/")
    if "@" in chroot:  # a credential holding '/': no part of it may reach a message
        raise InvalidSpec("store", redact(url), ALLOWED,
                          hint="a credential with '/' in it: pass it in $" + ENV_AUTH)
    if not slash or not chroot or chroot.endswith("/"):
        raise InvalidSpec("store", redact(url), ALLOWED,
                          hint="name a chroot, e.g. zk://h1:2181/ahvlite")
    user, secret = DEFAULT_AUTH
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user, sep, secret = auth.partition(":")
        if not sep or not user or not secret:
            raise InvalidSpec("store", redact(url), ALLOWED, hint="credentials are USER:SECRET")
    elif env.get(ENV_AUTH):
        user, sep, secret = env[ENV_AUTH].partition(":")
        if not sep or not user or not secret:
            raise InvalidSpec(ENV_AUTH, "***", "USER:SECRET")
    elif env.get(ENV_SECRET_FILE):
        user, secret = read_secret_file(Path(env[ENV_SECRET_FILE]))
    hosts = []
    for item in netloc.split(","):
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "2181"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidSpec("store", redact(url), ALLOWED, hint=f"bad host:port {item!r}")
        hosts.append((host, int(port)))
    return ZkUrl(tuple(hosts), "/" + chroot, user, secret)


def read_secret_file(path: Path) -> tuple[str, str]:
    """``USER:SECRET`` from ``path`` (never echoed in errors)."""
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidSpec(ENV_SECRET_FILE, str(path),
                          f"a readable file holding USER:SECRET ({type(exc).__name__})"
                          ) from None
    user, sep, secret = text.partition(":")
    if not sep or not user or not secret or "\n" in text:
        raise InvalidSpec(ENV_SECRET_FILE, str(path), "a file holding one line USER:SECRET")
    return user, secret
