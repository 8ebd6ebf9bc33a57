"""One machine as a whole cluster, for a newcomer: a controller on the embedded SQLite
store, reached through the same API and CLI as a real cluster.

``ahvlite local up`` lays out in one directory what the playbook gives a provisioned
host (a CA, the API's server certificate, the environment file the unit reads), an
admin's client certificate, writes a one-host cluster into the store, starts
``ahvlite controller run`` from the environment file as the systemd unit does, and
writes the client config. Every later command is then an API call, as on a cluster of
many hosts; nothing here is a second code path for them.

No HA agent runs: with one host there is nowhere to restart a VM.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ahvlite.clock import SYSTEM, Clock, wait_until
from ahvlite.errors import Conflict, InvalidSpec, NotFound, OperationTimeout

DEFAULT_DIR = Path("/var/lib/ahvlite/local")
MARK = "# written by ahvlite local up"
CLUSTER = "local"


@dataclass(frozen=True)
class LocalLayout:
    """Where the local controller keeps its files (root only: keys, store)."""

    root: Path

    @property
    def env_file(self) -> Path:
        return self.root / "controller.env"

    @property
    def store(self) -> Path:
        return self.root / "store.db"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def server_dir(self) -> Path:
        return self.root / "pki"

    @property
    def admin_dir(self) -> Path:
        return self.root / "admin"

    @property
    def pid_file(self) -> Path:
        return self.root / "controller.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "controller.log"

    @property
    def store_url(self) -> str:
        return f"sqlite://{self.store}"


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    try:
        ok = bool(sep and host) and 1 <= int(port) <= 65535
        socket.inet_aton(host)
    except (ValueError, OSError):
        ok = False
    if not ok:
        raise InvalidSpec("listen", listen, "IPV4ADDR:PORT, e.g. 127.0.0.1:9440")
    return host, int(port)


def host_name() -> str:
    """This machine's name as a cluster host name (letters, digits, ``._-``)."""
    raw = socket.gethostname().split(".")[0]
    name = "".join(c if c.isalnum() or c in "_-" else "-" for c in raw).strip("-_")
    return name[:63] or "localhost"


def env_file_text(layout: LocalLayout, listen: str, host: str) -> str:
    lines = {
        "AHVLITE_STORE": layout.store_url,
        "AHVLITE_HOST": host,
        "AHVLITE_API_LISTEN": listen,
        "AHVLITE_API_CERT": str(layout.server_dir / "api.pem"),
        "AHVLITE_API_KEY": str(layout.server_dir / "api-key.pem"),
        "AHVLITE_API_CA": str(layout.server_dir / "ca.pem"),
        "AHVLITE_API_UPLOADS": str(layout.root / "uploads"),
    }
    return f"{MARK}, read like systemd's EnvironmentFile=\n" + "".join(
        f"{k}={v}\n" for k, v in lines.items())


def client_config_text(layout: LocalLayout, listen: str) -> str:
    a = layout.admin_dir
    return (f"{MARK} (the local controller's admin)\n"
            f"endpoints: [https://{listen}]\n"
            f"ca: {a / 'ca.pem'}\ncert: {a / 'admin.pem'}\nkey: {a / 'admin-key.pem'}\n")


def write_files(layout: LocalLayout, listen: str, host: str) -> None:
    """CA, certificates and environment file; an existing CA is kept (the admin's
    certificates stay valid across `local down` / `local up`)."""
    from ahvlite.pki import ADMINS_UNIT, CA_CERT, CertificateAuthority, write_secret

    addr, _ = parse_listen(listen)
    layout.root.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.root, 0o700)
    if (layout.ca_dir / CA_CERT).exists():
        ca = CertificateAuthority.load(layout.ca_dir)
    else:
        ca = CertificateAuthority.new(f"ahvlite local {host} CA")
        ca.save(layout.ca_dir)
    server = ca.issue(host, ips=(addr,), dns=("localhost", host), server=True, client=False)
    (layout.server_dir).mkdir(parents=True, exist_ok=True)
    (layout.server_dir / "ca.pem").write_bytes(ca.cert_pem)
    (layout.server_dir / "api.pem").write_bytes(server.cert_pem)
    write_secret(layout.server_dir / "api-key.pem", server.key_pem)
    admin = ca.issue("admin", server=False, client=True, unit=ADMINS_UNIT)
    layout.admin_dir.mkdir(parents=True, exist_ok=True)
    (layout.admin_dir / "ca.pem").write_bytes(ca.cert_pem)
    (layout.admin_dir / "admin.pem").write_bytes(admin.cert_pem)
    write_secret(layout.admin_dir / "admin-key.pem", admin.key_pem)
    layout.env_file.write_text(env_file_text(layout, listen, host))
    os.chmod(layout.env_file, 0o600)


def ensure_cluster(layout: LocalLayout, host: str, uri: str, pool: str) -> bool:
    """The one-host cluster into the store unless it holds one already (then it is
    left as it is: `local up` again must not undo what was applied since). True when
    written."""
    from ahvlite.cluster.state import ClusterState
    from ahvlite.controller.coord import open_store
    from ahvlite.spec.cluster import ClusterSpec, HostSpec
    from ahvlite.spec.errors import build

    spec = build(ClusterSpec, name=CLUSTER, shared_pool=pool,
                 hosts=[build(HostSpec, name=host, uri=uri)])
    coord = open_store(layout.store_url)
    try:
        st = ClusterState(coord)
        if st.spec_version() is not None:
            return False
        st.write_spec(spec, None)
        return True
    finally:
        coord.close()


def check_client_config(path: Path) -> None:
    """Refuse to replace a client config the user wrote (ours carry MARK)."""
    if path.exists() and not path.read_text(errors="replace").startswith(MARK):
        raise Conflict(f"{path} exists and was not written by `ahvlite local up`",
                       hint="pass --client-config PATH for another file, or move it aside")


def write_client_config(path: Path, text: str) -> None:
    check_client_config(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def running_pid(layout: LocalLayout) -> int | None:
    """The PID of the controller `local up` started, if it still runs. A PID reused by
    another program does not count (its command line is checked)."""
    try:
        pid = int(layout.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    argv = _cmdline(pid)
    if "controller" in argv and "run" in argv and any("ahvlite" in a for a in argv):
        return pid
    return None


def api_answers(url: str, ca_file: Path, timeout_s: float = 2) -> bool:
    """Whether ``url``'s /v1/health answers 200 over TLS verified by ``ca_file``."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    try:
        with urllib.request.urlopen(f"{url}/v1/health", timeout=timeout_s, context=ctx) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def start(layout: LocalLayout, listen: str, *, timeout_s: float = 60,
          clock: Clock = SYSTEM) -> int:
    """Start the controller from the environment file (as the unit does) and wait
    until its API answers; its PID."""
    from ahvlite.envfile import read_env_file

    if (pid := running_pid(layout)) is not None:
        return pid
    env = {**os.environ, **read_env_file(layout.env_file)}
    argv = [sys.executable, "-m", "ahvlite.cli.main", "controller", "run"]
    with open(layout.log_file, "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True, close_fds=True)
    layout.pid_file.write_text(f"{proc.pid}\n")
    url = f"https://{listen}"

    def state() -> str:
        if api_answers(url, layout.admin_dir / "ca.pem"):
            return "answers"
        return "exited" if proc.poll() is not None else ""

    got = wait_until(state, timeout_s=timeout_s, interval_s=0.2, clock=clock)
    if got == "exited":
        layout.pid_file.unlink(missing_ok=True)
        raise NotFound(f"the controller exited with status {proc.returncode} before "
                       f"its API answered", hint=f"see {layout.log_file}")
    if not got:
        raise OperationTimeout(f"the controller's API at {url} did not answer in "
                               f"{timeout_s:.0f} s", hint=f"see {layout.log_file}")
    return proc.pid


def stop(layout: LocalLayout, *, timeout_s: float = 15,
         clock: Clock = SYSTEM) -> int | None:
    """Stop the controller `local up` started (by its recorded PID); its PID, or None
    when none ran."""
    pid = running_pid(layout)
    layout.pid_file.unlink(missing_ok=True)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    gone = wait_until(lambda: not (Path(f"/proc/{pid}").exists() and _cmdline(pid)),
                      timeout_s=timeout_s, interval_s=0.1, clock=clock)
    if not gone:
        os.kill(pid, signal.SIGKILL)
    return pid
