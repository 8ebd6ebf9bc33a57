"""Commands on hosts over SSH (paramiko), with host keys verified, never auto-accepted."""

from __future__ import annotations

import shlex
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


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str


@contextmanager
def session(target: SshTarget, *, timeout_s: float = 10) -> Iterator[paramiko.SSHClient]:
    client = paramiko.SSHClient()
    if target.known_hosts:
        client.load_host_keys(str(target.known_hosts))
    else:
        client.load_system_host_keys()
    # An unknown host key is an error, not a question: the cluster file names the
    # known_hosts that vouches for each host.
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(target.host, port=target.port, username=target.user,
                       key_filename=str(target.key) if target.key else None,
                       timeout=timeout_s, banner_timeout=timeout_s, auth_timeout=timeout_s,
                       allow_agent=False, look_for_keys=target.key is None)
    except paramiko.BadHostKeyException as exc:
        raise HostUnreachable(f"{target.host}: host key does not match known_hosts ({exc})",
                              hint="the host was reinstalled, or this is not that host") from None
    except paramiko.SSHException as exc:
        raise HostUnreachable(f"ssh {target.user}@{target.host}: {exc}") from None
    except (TimeoutError, OSError) as exc:
        raise HostUnreachable(f"ssh {target.user}@{target.host}:{target.port}: {exc}") from None
    try:
        yield client
    finally:
        client.close()


def run(target: SshTarget, argv: list[str], *, timeout_s: float = 60,
        check: bool = True) -> CommandResult:
    """Run ``argv`` on ``target``; a non-zero exit raises unless ``check`` is False."""
    command = shlex.join(argv)
    with session(target) as client:
        try:
            _, out, err = client.exec_command(command, timeout=timeout_s)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
            status = out.channel.recv_exit_status()
        except TimeoutError:
            raise OperationTimeout(f"{target.host}: {command} took over {timeout_s:.0f} s") \
                from None
    if check and status != 0:
        raise OperationFailed(f"{target.host}: {command} exited {status}: {stderr.strip()}")
    return CommandResult(status, stdout, stderr)
