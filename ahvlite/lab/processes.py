"""Processes the lab starts, and ending them by the PIDs it recorded (never by name)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from ahvlite.clock import wait_until
from ahvlite.errors import OperationFailed
from ahvlite.lab.state import ProcessRecord


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 on), or None when the
    process is gone (it may end between any two reads: read once, decide on that)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses; split after it.
    return stat.rsplit(")", 1)[1].split()


def starttime(pid: int) -> int | None:
    """Kernel start time of ``pid`` in clock ticks, or None when it is gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def is_alive(record: ProcessRecord) -> bool:
    """The recorded process still runs: same start time, and not a zombie."""
    fields = _stat(record.pid)
    return fields is not None and int(fields[19]) == record.starttime and fields[0] != "Z"


def spawn(argv: list[str], *, log: Path, host: str, role: str) -> ProcessRecord:
    """Start a daemon in the foreground of its own session; it outlives this CLI."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)
    st = starttime(proc.pid)
    if st is None:
        raise OperationFailed(f"{role} on {host or 'root'} exited at once; see {log}")
    # The Popen object is dropped on purpose: the daemon belongs to the lab, and
    # lab down ends it by PID. Python would otherwise warn that it still runs.
    proc.returncode = 0
    return ProcessRecord(host=host, role=role, pid=proc.pid, starttime=st, argv=list(argv))


def stop(records: list[ProcessRecord], *, grace_s: float = 5.0) -> None:
    """SIGTERM each live recorded process, then SIGKILL what is left after the grace."""
    live = [r for r in records if is_alive(r)]
    for r in live:
        _signal(r, signal.SIGTERM)

    def ended() -> bool:
        nonlocal live
        _reap(live)
        live = [r for r in live if is_alive(r)]
        return not live

    wait_until(ended, timeout_s=grace_s, interval_s=0.05)
    for r in live:
        _signal(r, signal.SIGKILL)
    # SIGKILL is delivered asynchronously; wait until the kernel has ended them, so
    # callers can remove namespaces and files the processes held.
    wait_until(ended, timeout_s=5, interval_s=0.02)


def _signal(r: ProcessRecord, sig: int) -> None:
    # Check the start time right before signalling: the PID must still be ours.
    if starttime(r.pid) == r.starttime:
        with contextlib.suppress(ProcessLookupError):
            os.kill(r.pid, sig)


def _reap(records: list[ProcessRecord]) -> None:
    for r in records:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(r.pid, os.WNOHANG)


def pids_in_netns(netns_path: Path) -> list[ProcessRecord]:
    """Every process living in the given network namespace.

    Used to end what the lab started indirectly (QEMU, started by a lab libvirtd) and
    what a killed lab left behind: the namespace is the lab's, so are its processes.
    """
    return _pids_in_ns(netns_path, "net")


def pids_in_mntns(mnt_ns_file: Path) -> list[ProcessRecord]:
    """Every process living in the given mount namespace (a lab host's ``.mnt`` file).

    A lab host's netagent starts dnsmasq in network namespaces nested in the host (one
    per managed network), invisible to :func:`pids_in_netns` of the host's; they share
    the host's mount namespace, which is the lab's alone.
    """
    return _pids_in_ns(mnt_ns_file, "mnt")


def _pids_in_ns(ns_file: Path, kind: str) -> list[ProcessRecord]:
    try:
        target = os.stat(ns_file)
    except FileNotFoundError:
        return []
    if target.st_dev != os.stat(f"/proc/self/ns/{kind}").st_dev:
        return []  # not a namespace file (an unmounted placeholder): nothing lives there
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/{kind}").st_ino != target.st_ino:
                continue
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        st = starttime(int(entry))
        if st is not None:
            found.append(ProcessRecord(host="", role="leftover", pid=int(entry), starttime=st))
    return found
