"""Finding a lab host's processes by its namespaces, as ``lab down`` does."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ahvlite.lab import processes
from tests.waiting import wait_for

pytestmark = [pytest.mark.functional, pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")]


def test_a_process_in_a_nested_network_namespace_is_found_by_its_mount_namespace(tmp_path):
    """As the netagent's dnsmasq inside a lab host: a network namespace of its own, the
    host's mount namespace."""
    child = subprocess.Popen(["unshare", "--net", "--", "sleep", "60"])
    try:
        me = Path(f"/proc/{os.getpid()}/ns")
        assert wait_for(lambda: os.stat(f"/proc/{child.pid}/ns/net").st_ino
                        != os.stat(me / "net").st_ino, 5)
        by_net = {p.pid for p in processes.pids_in_netns(me / "net")}
        by_mnt = {p.pid for p in processes.pids_in_mntns(me / "mnt")}
        assert child.pid not in by_net
        assert {child.pid, os.getpid()} <= by_mnt
        placeholder = tmp_path / "h1.mnt"  # an ns file whose namespace was released
        placeholder.touch()
        assert processes.pids_in_mntns(placeholder) == []
        assert processes.pids_in_mntns(tmp_path / "gone.mnt") == []
    finally:
        child.kill()  # ours, by its PID
        child.wait(timeout=10)
