"""Fixtures shared by functional tests."""

from __future__ import annotations

import threading

import pytest

from ahvlite.controller.coord.sqlite import SqliteCoordinator


@pytest.fixture
def leader(tmp_path):
    """A real SQLite coordinator that has won the election."""
    coord = SqliteCoordinator(tmp_path / "c.db")
    elected = threading.Event()
    coord.campaign("me", lambda t: elected.set(), lambda r: None)
    assert elected.wait(5)
    yield coord
    coord.close()
