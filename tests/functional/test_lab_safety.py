"""The lab refuses a subnet that already leads somewhere, and creates nothing then."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ahvlite.net import netlink


@pytest.fixture
def routed_elsewhere():
    # A bridge with an address stands for "this subnet is reachable another way" (the
    # dummy driver is not in every kernel these tests run on).
    netlink.create_bridge("ahvt-other")
    netlink.add_address("ahvt-other", "10.213.242.1/24")
    netlink.set_link_up("ahvt-other")
    yield "10.213.242.0/24"
    netlink.delete_link("ahvt-other")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netlink changes")
def test_lab_up_refuses_a_subnet_routed_elsewhere(routed_elsewhere, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ahvlite.cli.main", "lab", "up", "--name", "tsafe",
         "--hosts", "1", "--subnet", routed_elsewhere],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "AHVLITE_LAB_DIR": str(tmp_path)})
    assert result.returncode == 10, result.stderr
    assert "already in use" in result.stderr and "ahvt-other" in result.stderr
    assert not netlink.link_exists("ahvl-tsafe")
    assert not [n for n in netlink.list_netns() if n.startswith("ahvl-tsafe-")]
    assert not (tmp_path / "tsafe" / "state.json").exists()
