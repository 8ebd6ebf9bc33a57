"""Fixtures shared by functional tests."""

from __future__ import annotations

import threading

import pytest

from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.lab.services import start_local_ensemble


@pytest.fixture
def leader(tmp_path):
    """A real SQLite coordinator that has won the election."""
    coord = SqliteCoordinator(tmp_path / "c.db")
    elected = threading.Event()
    coord.campaign("me", lambda t: elected.set(), lambda r: None)
    assert elected.wait(5)
    yield coord
    coord.close()


@pytest.fixture(scope="module")
def zk(tmp_path_factory):
    """A real one-member ZooKeeper for the module (each test takes a chroot of its own);
    modules that need more members or TLS define their own ``zk``."""
    ens = start_local_ensemble(tmp_path_factory.mktemp("zk"), 1)
    yield ens
    ens.stop()
