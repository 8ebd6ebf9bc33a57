"""Hypothesis profiles for the whole suite.

The gate that decides whether a change lands must not depend on luck: under the
default "gate" profile every property test runs the same derandomized examples on
every machine, so a green run here is a green run in CI. New ground is covered by the
"explore" profile (random examples, the example database on): run
`make explore` before touching planning code, and turn any failure it finds into a
fixed example in the test.
"""

from __future__ import annotations

import os

from hypothesis import settings

# Controllers the tests start (in process or as subprocesses, lab hosts included) also
# offer the drill task kinds (sleep, vm.create); a production controller does not.
os.environ.setdefault("AHVLITE_DRILL_KINDS", "1")

settings.register_profile("gate", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gate"))

# `make test` runs modules on parallel workers (pytest-xdist, one module per worker at a
# time: a lab module's fixture builds its lab once). Workers take modules in collection
# order, so the longest go first and the short ones fill in at the end; the figures are
# a lab module's wall time on 2 cores (seconds, `pytest --durations=0`), rounded.
SLOW_FIRST = {
    "tests/lab/test_iscsi.py": 420,
    "tests/lab/test_cluster_truth.py": 300,
    "tests/lab/test_ha_split.py": 160,
    "tests/lab/test_provision.py": 120,
    "tests/lab/test_migration.py": 100,
    "tests/lab/test_ha.py": 90,
    "tests/lab/test_networking.py": 90,
    "tests/lab/test_vms.py": 80,
    "tests/lab/test_cpu.py": 60,
    "tests/lab/test_cvm.py": 50,
    "tests/lab/test_hosts.py": 50,
    "tests/lab/test_controller_lab.py": 45,
    "tests/lab/test_two_host_lab.py": 40,
    "tests/lab/test_leftovers.py": 30,
    "tests/lab/test_hostconn.py": 25,
    "tests/lab/test_partition.py": 25,
    "tests/lab/test_nfs_pool.py": 20,
}


def pytest_collection_modifyitems(session, config, items):
    def weight(item) -> tuple[int, int]:
        path = item.nodeid.split("::", 1)[0]
        if path.startswith("tests/lab/"):
            return (0, -SLOW_FIRST.get(path, 60))
        return (1 if path.startswith("tests/functional/") else 2, 0)

    items.sort(key=weight)  # stable: tests keep their order within a module
