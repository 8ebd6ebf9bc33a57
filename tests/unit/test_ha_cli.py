"""`ahvlite ha set`: validated, stored beside the cluster file, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ahvlite.cluster.legacy import open_cluster_file
from ahvlite.controller.ha.config import load_settings, settings_loader
from ahvlite.controller.ha.settings import HaSettings


def ahvlite(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ahvlite.cli.main", *args],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("AHVLITE_STORE", "AHVLITE_CLUSTER")})


def state_of(path):
    return open_cluster_file(path).state


@pytest.fixture
def cluster(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("name: c1\nhosts:\n- name: h1\n  uri: test:///default\n")
    return path


def test_set_stores_and_defaults_stay(cluster):
    assert load_settings(state_of(cluster)) == HaSettings()
    out = ahvlite("ha", "set", "--mode", "guarantee", "--rf", "3", "--reservation", "host",
                  "--json", "--cluster", str(cluster))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["mode"], doc["rf"], doc["reservation"]) == ("guarantee", 3, "host")
    assert load_settings(state_of(cluster)).rf == 3
    # Only what is given changes.
    ahvlite("ha", "set", "--rf", "2", "--cluster", str(cluster))
    s = load_settings(state_of(cluster))
    assert (s.mode, s.rf, s.reservation) == ("guarantee", 2, "host")
    stored = json.loads((cluster.parent / "cluster-state" / "ha.json").read_text())
    assert stored["lease_s"] == s.lease_s


@pytest.mark.parametrize(("args", "needle"), [
    (["--mode", "always"], "mode='always'"),
    (["--rf", "4"], "rf=4"),
    (["--reservation", "pool"], "reservation='pool'"),
    (["--lease", "1"], "lease_s=1.0"),
    (["--watchdog", "0.2"], "watchdog_s=0.2"),
])
def test_bad_settings_are_refused_and_nothing_is_stored(cluster, args, needle):
    out = ahvlite("ha", "set", *args, "--cluster", str(cluster))
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr + out.stdout
    assert load_settings(state_of(cluster)) == HaSettings()


def test_daemon_loader_keeps_the_last_good_settings(cluster):
    read = settings_loader(state_of(cluster), ttl_s=0)
    ahvlite("ha", "set", "--mode", "guarantee", "--cluster", str(cluster))
    assert read().mode == "guarantee"
    (cluster.parent / "cluster-state" / "ha.json").write_text("{broken")
    assert read().mode == "guarantee"
    assert settings_loader(None)() == HaSettings()
