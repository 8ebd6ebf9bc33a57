"""Commands and files on hosts over SSH (paramiko).

Host keys are checked against the known_hosts the cluster file names. An unknown or
changed key is refused, unless the caller passes ``trust_on_first_use`` (then an
unknown key is recorded; a changed key is still refused). Every connect and every
command has a timeout, and connections are pooled per target.
"""

from __future__ import annotations

import shlex
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ahvlite.errors import HostUnreachable, OperationFailed, OperationTimeout


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str = "root"
    port: int = 22
    key: Path | None = None
    known_hosts: Path | None = None
    trust_on_first_use: bool = False
    timeout_s: float = 10


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str

    @property
    def rc(self) -> int:
        return self.exit_status


class _RecordNewKey(paramiko.MissingHostKeyPolicy):
    """Trust on first use: accept an unknown key and write it to known_hosts."""

    def __init__(self, known_hosts: Path | None) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        if self.known_hosts is not None:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            client.save_host_keys(str(self.known_hosts))


def _connect(target: SshTarget) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    if target.known_hosts and target.known_hosts.exists():
        client.load_host_keys(str(target.known_hosts))
    elif target.known_hosts is None:
        client.load_system_host_keys()
    if target.trust_on_first_use:
        client.set_missing_host_key_policy(_RecordNewKey(target.known_hosts))
    else:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    where = f"{target.user}@{target.host}:{target.port}"
    try:
        client.connect(target.host, port=target.port, username=target.user,
                       key_filename=str(target.key) if target.key else None,
                       timeout=target.timeout_s, banner_timeout=target.timeout_s,
                       auth_timeout=target.timeout_s, allow_agent=False,
                       look_for_keys=target.key is None)
    except paramiko.BadHostKeyException:
        client.close()
        raise HostUnreachable(
            f"ssh {where}: the host key changed since it was recorded in "
            f"{target.known_hosts or 'known_hosts'}",
            hint="if the host was reinstalled, remove its old line; otherwise this may "
                 "not be the host you think") from None
    except paramiko.AuthenticationException:
        client.close()
        raise HostUnreachable(f"ssh {where}: authentication failed with key {target.key}",
                              hint="is the key's public half in the host's "
                                   "authorized_keys?") from None
    except paramiko.SSHException as exc:
        client.close()
        if "not found in known_hosts" in str(exc):
            raise HostUnreachable(
                f"ssh {where}: host key is not in {target.known_hosts or 'known_hosts'}",
                hint="add it to known_hosts, or pass --trust-on-first-use") from None
        raise HostUnreachable(f"ssh {where}: {exc}") from None
    except TimeoutError:
        client.close()
        raise HostUnreachable(f"ssh {where}: no answer in {target.timeout_s:.0f} s") from None
    except OSError as exc:
        client.close()
        raise HostUnreachable(f"ssh {where}: {exc.strerror or exc}") from None
    return client


class SshPool:
    """One open SSH connection per target, reused until it breaks."""

    def __init__(self) -> None:
        self._clients: dict[SshTarget, paramiko.SSHClient] = {}
        self._lock = threading.Lock()

    def get(self, target: SshTarget) -> paramiko.SSHClient:
        with self._lock:
            client = self._clients.get(target)
            transport = client.get_transport() if client else None
            if client is not None and transport is not None and transport.is_active():
                return client
            client = _connect(target)
            self._clients[target] = client
            return client

    def drop(self, target: SshTarget) -> None:
        with self._lock:
            client = self._clients.pop(target, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()


_pool = SshPool()


@contextmanager
def session(target: SshTarget, *, pool: SshPool | None = None) -> Iterator[paramiko.SSHClient]:
    """A pooled client for ``target``; a broken connection is dropped, not reused."""
    p = pool or _pool
    client = p.get(target)
    try:
        yield client
    except (FileNotFoundError, PermissionError):
        raise  # the host answered: the connection is fine
    except (paramiko.SSHException, OSError, EOFError):
        p.drop(target)
        raise


def run(target: SshTarget, argv: list[str], *, timeout_s: float = 60, check: bool = True,
        pool: SshPool | None = None) -> CommandResult:
    """Run ``argv`` on ``target``; a non-zero exit raises unless ``check`` is False."""
    command = shlex.join(argv)
    try:
        with session(target, pool=pool) as client:
            chan = _channel(client, min(target.timeout_s, timeout_s), timeout_s)
            chan.exec_command(command)
            stdout = chan.makefile("r").read().decode(errors="replace")
            stderr = chan.makefile_stderr("r").read().decode(errors="replace")
            status = chan.recv_exit_status()
    except TimeoutError:
        raise OperationTimeout(f"{target.host}: {command} took over {timeout_s:.0f} s") \
            from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise HostUnreachable(f"{target.host}: ssh broke while running {command}: {exc}") \
            from None
    if check and status != 0:
        raise OperationFailed(f"{target.host}: {command} exited {status}: {stderr.strip()}")
    return CommandResult(status, stdout, stderr)


def _channel(client: paramiko.SSHClient, open_s: float, io_s: float) -> paramiko.Channel:
    """A channel whose opening and every read are bounded. paramiko's ``open_sftp``
    waits up to an hour for a channel: a pooled connection to a host that lost power
    still looks active (no RST ever comes), and a reader would hang with it."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise paramiko.SSHException("connection closed")
    chan = transport.open_session(timeout=open_s)
    chan.settimeout(io_s)
    return chan


def _sftp(client: paramiko.SSHClient, timeout_s: float) -> paramiko.SFTPClient:
    chan = _channel(client, timeout_s, timeout_s)
    chan.invoke_subsystem("sftp")
    return paramiko.SFTPClient(chan)


@contextmanager
def _file_errors(target: SshTarget, path: str, verb: str) -> Iterator[None]:
    """A file operation's failures as ahvlite's errors; a broken or silent connection
    has been dropped from the pool by ``session`` on the way out."""
    try:
        yield
    except FileNotFoundError:
        raise OperationFailed(f"{target.host}: {path} does not exist") from None
    except PermissionError:
        raise OperationFailed(f"{target.host}: {path} is not {verb}") from None
    except TimeoutError:
        raise HostUnreachable(f"ssh {target.host}: no answer in {target.timeout_s:.0f} s "
                              f"while reading {path}") from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise HostUnreachable(f"{target.host}: ssh broke on {path}: "
                              f"{exc or type(exc).__name__}") from None


def read_file(target: SshTarget, path: str, *, pool: SshPool | None = None) -> str:
    """The text of a file on the host (sysfs and procfs files included)."""
    with _file_errors(target, path, "readable"), session(target, pool=pool) as client, \
            _sftp(client, target.timeout_s) as sftp, sftp.open(path, "r") as f:
        return f.read().decode(errors="replace")


def put_file(target: SshTarget, local: Path, remote: str, *, mode: int = 0o644,
             pool: SshPool | None = None) -> None:
    """Copy a file to the host, written under a temporary name and renamed into place."""
    tmp = f"{remote}.ahvlite-tmp"
    with _file_errors(target, remote, "writable"), session(target, pool=pool) as client, \
            _sftp(client, target.timeout_s) as sftp:
        sftp.put(str(local), tmp)
        sftp.chmod(tmp, mode)
        sftp.posix_rename(tmp, remote)
