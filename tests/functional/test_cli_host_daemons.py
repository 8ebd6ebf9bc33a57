"""The host daemons (`agent run`, `netagent run`) refuse a missing or bad host name with
one clear line before they touch the store."""

from __future__ import annotations

import pytest

from tests.clirun import ahvlite, without_settings

pytestmark = pytest.mark.functional


@pytest.mark.parametrize("daemon", ["agent", "netagent"])
@pytest.mark.parametrize(("argv", "says"), [
    ((), "$AHVLITE_HOST"),
    (("--host", "no such/host"), "no such/host"),
])
def test_a_host_daemon_needs_a_good_host_name(daemon, argv, says):
    r = ahvlite(daemon, "run", "--store", "sqlite:////nonexistent/db", *argv,
                env=without_settings(), timeout_s=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--host" in r.stderr and says in r.stderr and "Traceback" not in r.stderr
