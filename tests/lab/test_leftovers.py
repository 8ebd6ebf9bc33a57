"""A lab killed half-way, or whose state file is lost, is cleared by the next lab up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ahvlite.lab import lab, processes
from ahvlite.lab.state import LabState
from ahvlite.spec.lab import LabSpec

from .conftest import assert_gone, lab_leftovers

NAME = "tkill"
SUBNET = "10.213.241.0/28"


def _wait_for_state(predicate, timeout_s=90):
    path = lab.lab_root(NAME) / "state.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            raw = json.loads(path.read_text())
            if predicate(raw):
                return raw
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    raise AssertionError("lab up never reached the expected point")


@pytest.mark.parametrize("lose_state", [False, True], ids=["killed", "killed-and-state-lost"])
def test_next_lab_up_clears_a_killed_lab(lose_state):
    cli = subprocess.Popen([sys.executable, "-m", "ahvlite.cli.main", "lab", "up", "--name",
                            NAME, "--hosts", "1", "--subnet", SUBNET, "--json"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # A live libvirtd of *this* run: a state file left by an earlier failed run
        # lists dead ones.
        raw = _wait_for_state(lambda s: any(
            p["role"] == "libvirtd" and processes.is_alive(processes.ProcessRecord(**p))
            for p in s["processes"]))
    finally:
        cli.send_signal(signal.SIGKILL)
        cli.wait()
    old = [processes.ProcessRecord(**p) for p in raw["processes"]]
    assert any(processes.is_alive(p) for p in old)
    assert lab_leftovers(NAME)["netns"]
    if lose_state:
        os.unlink(lab.lab_root(NAME) / "state.json")

    status = lab.up(LabSpec(name=NAME, hosts=1, subnet=SUBNET))
    try:
        assert status["hosts"][0]["up"]
        assert not any(processes.is_alive(p) for p in old)
        new = LabState.load(lab.lab_root(NAME) / "state.json")
        assert {p.pid for p in new.processes}.isdisjoint({p.pid for p in old})
    finally:
        pids = list(LabState.load(lab.lab_root(NAME) / "state.json").processes)
        lab.down(NAME)
    assert_gone(NAME, pids + old)
