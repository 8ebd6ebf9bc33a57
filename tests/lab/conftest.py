"""Labs for whole-scenario tests. Each module builds its own lab with its own name."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ahvlite.lab import lab
from ahvlite.lab.layout import HostLayout
from ahvlite.lab.prereqs import check_lab_prerequisites


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session", autouse=True)
def _lab_prerequisites():
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (run `make test` as root)")
    check_lab_prerequisites()


def in_host(host: HostLayout, *argv: str, timeout_s: float = 30) -> subprocess.CompletedProcess:
    """Run a command inside a lab host's namespaces."""
    from ahvlite.lab import namespaces

    return subprocess.run(
        namespaces.enter_argv(host.netns, host.mnt_ns_file, host.uts_ns_file) + list(argv),
        capture_output=True, text=True, timeout=timeout_s)


def lab_leftovers(name: str) -> dict[str, list[str]]:
    """What of lab ``name`` still exists on this machine."""
    from ahvlite.lab.layout import bridge_name, netns_prefix, segment_prefix, veth_prefix
    from ahvlite.net import netlink

    links = netlink.links_with_prefix(veth_prefix(name))
    links += netlink.links_with_prefix(segment_prefix(name))
    if netlink.link_exists(bridge_name(name)):
        links.append(bridge_name(name))
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    mounts = [line for line in mountinfo if f"/labs/{name}/" in line]
    return {
        "netns": [n for n in netlink.list_netns() if n.startswith(netns_prefix(name))],
        "links": links,
        "mounts": mounts,
    }


def down_keeping_logs(name: str, keep: Path, logs: tuple[str, ...]) -> None:
    """Copy each host's ``logs`` (names under its state dir's logs/) into ``keep`` as
    HOST-NAME (what the daemons decided and when: lab down removes them), then take
    the lab down and check nothing of it is left."""
    layout = lab.layout_of(name)
    for h in layout.hosts:
        for log in logs:
            src = h.state_dir / "logs" / log
            if src.exists():
                (keep / f"{h.name}-{log}").write_bytes(src.read_bytes())
    pids = list(lab.state_of(name).processes)
    lab.down(name)
    assert_gone(name, pids)


def assert_gone(name: str, pids: list) -> None:
    from ahvlite.lab import processes

    assert lab_leftovers(name) == {"netns": [], "links": [], "mounts": []}
    alive = [p for p in pids if processes.is_alive(p)]
    assert alive == []
    assert not (lab.lab_root(name) / "state.json").exists()
