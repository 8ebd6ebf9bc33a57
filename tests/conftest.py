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
