"""Store URLs: ``sqlite:///path/to/db`` and ``zk://h1:2281,h2:2281/chroot``, and how a
client reaches a ZooKeeper store: its credential and its TLS files.

The credential comes, in this order, from the URL (``zk://USER:SECRET@...``: tests
only, since a URL ends up on command lines), from the file named by
``$AHVLITE_STORE_SECRET_FILE`` (one line ``USER:SECRET``, readable by its owner only:
what hosts use), or from ``$AHVLITE_ZK_AUTH``. With ``$AHVLITE_STORE_TLS_DIR`` the
client speaks TLS to ZooKeeper's secure client port, with the files :data:`TLS_FILES`
of that directory (the cluster CA, and this client's certificate and key).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ahvlite.errors import InvalidSpec

ALLOWED = "sqlite:///ABSOLUTE/PATH or zk://HOST:PORT[,HOST:PORT...]/CHROOT"
ENV_AUTH = "AHVLITE_ZK_AUTH"
ENV_SECRET_FILE = "AHVLITE_STORE_SECRET_FILE"
ENV_TLS_DIR = "AHVLITE_STORE_TLS_DIR"
DEFAULT_AUTH = ("ahvlite", "ahvlite")
# In $AHVLITE_STORE_TLS_DIR: the CA that signed the members' certificates, and the
# client certificate and key this process presents (ZooKeeper asks for one).
TLS_CA, TLS_CERT, TLS_KEY = "ca.pem", "client.pem", "client-key.pem"
TLS_FILES = (TLS_CA, TLS_CERT, TLS_KEY)
SECRET_MAX_BYTES = 4096


@dataclass(frozen=True)
class SqliteUrl:
    path: Path

    def redacted(self) -> str:
        return f"sqlite://{self.path}"


@dataclass(frozen=True)
class ZkTls:
    """The files a client needs for ZooKeeper's TLS port."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, directory: Path, field: str = ENV_TLS_DIR) -> ZkTls:
        """The TLS files in ``directory``; the first missing one is named."""
        if not directory.is_absolute():
            raise InvalidSpec(field, str(directory), "an absolute directory path")
        for name in TLS_FILES:
            if not (directory / name).is_file():
                raise InvalidSpec(field, str(directory),
                                  f"a directory holding {', '.join(TLS_FILES)}",
                                  hint=f"{directory / name} is missing")
        return cls(directory / TLS_CA, directory / TLS_CERT, directory / TLS_KEY)


@dataclass(frozen=True)
class ZkUrl:
    hosts: tuple[tuple[str, int], ...]
    chroot: str
    user: str
    secret: str
    tls: ZkTls | None = None

    def hosts_string(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.hosts)

    def redacted(self) -> str:
        return f"zk://{self.user}:***@{self.hosts_string()}{self.chroot}"

    def __repr__(self) -> str:  # never the secret, wherever an object ends up
        return f"ZkUrl({self.redacted()!r}, tls={self.tls is not None})"


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
                          hint=f"name a file holding USER:SECRET in ${ENV_SECRET_FILE} "
                               f"(or set ${ENV_AUTH})")


def _split_auth(field: str, text: str) -> tuple[str, str]:
    user, sep, secret = text.partition(":")
    if not sep or not user or not secret or any(c in text for c in "\r\n\0"):
        raise InvalidSpec(field, "***", "USER:SECRET")
    return user, secret


def read_secret_file(path_name: str | Path) -> tuple[str, str]:
    """USER and SECRET from the file ``path_name``: one line, owner-only permissions.
    No error shows any of its content."""
    field = ENV_SECRET_FILE
    path, path_text = Path(path_name), str(path_name)
    if not path.is_absolute():
        raise InvalidSpec(field, path_text, "an absolute path to a file holding USER:SECRET")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise InvalidSpec(field, path_text, "a readable file holding USER:SECRET",
                          hint=exc.strerror) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
        os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidSpec(field, path_text, "a regular file holding USER:SECRET")
        # As ssh does with keys: a secret others can read is no longer a secret.
        raise InvalidSpec(field, path_text, "a file only its owner may read",
                          hint=f"chmod 600 {path_text}")
    with os.fdopen(fd, "rb") as f:
        data = f.read(SECRET_MAX_BYTES + 1)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise InvalidSpec(field, path_text, "one line USER:SECRET (UTF-8)") from None
    if len(data) > SECRET_MAX_BYTES:
        raise InvalidSpec(field, path_text, f"one line USER:SECRET, at most "
                          f"{SECRET_MAX_BYTES} bytes")
    line = text[:-1] if text.endswith("\n") else text
    try:
        return _split_auth(field, line)
    except InvalidSpec:
        raise InvalidSpec(field, path_text, "one line USER:SECRET") from None


def parse_store_url(url: str, env: Mapping[str, str] | None = None) -> StoreUrl:
    """Parse and validate; credentials come from the URL, then the secret file named
    by $AHVLITE_STORE_SECRET_FILE, then $AHVLITE_ZK_AUTH; TLS from $AHVLITE_STORE_TLS_DIR."""
    env = os.environ if env is None else env
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
                          hint=f"keep credentials out of the URL: ${ENV_SECRET_FILE}")
    if not slash or not chroot or chroot.endswith("/"):
        raise InvalidSpec("store", redact(url), ALLOWED,
                          hint="name a chroot, e.g. zk://h1:2281/ahvlite")
    user, secret = DEFAULT_AUTH
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user, sep, secret = auth.partition(":")
        if not sep or not user or not secret:
            raise InvalidSpec("store", redact(url), ALLOWED, hint="credentials are USER:SECRET")
    elif env.get(ENV_SECRET_FILE):
        user, secret = read_secret_file(env[ENV_SECRET_FILE])
    elif env.get(ENV_AUTH):
        user, secret = _split_auth(ENV_AUTH, env[ENV_AUTH])
    hosts = []
    for item in netloc.split(","):
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, "2181"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidSpec("store", redact(url), ALLOWED, hint=f"bad host:port {item!r}")
        hosts.append((host, int(port)))
    tls_dir = env.get(ENV_TLS_DIR)
    tls = ZkTls.from_dir(Path(tls_dir)) if tls_dir else None
    return ZkUrl(tuple(hosts), "/" + chroot, user, secret, tls)
