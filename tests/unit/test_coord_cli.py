"""Controller and stats commands: one clear message and exit code, never a traceback."""

from __future__ import annotations

import pytest

from tests.clirun import ahvlite, without_settings


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["controller", "run"], 3, "no controller store given"),
    (["controller", "run", "--store", "etcd://h/x"], 2, "store='etcd://h/x'"),
    (["controller", "run", "--store", "zk://h1:2181"], 2, "name a chroot"),
    (["controller", "run", "--store", "sqlite:///nonexistent-dir/c.db"], 6,
     "does not exist"),
    # `controller status` and `stats` are API clients: without a client config, say so
    (["controller", "status"], 3, "no API endpoints configured"),
    (["stats"], 3, "no API endpoints configured"),
    # a controller refuses the credential every ahvlite knows, and shows no secret
    (["controller", "run", "--store", "zk://127.0.0.1:1/ahvlite"], 2, "credential of your own"),
    (["controller", "run", "--store", "zk://ahvlite:ahvlite@127.0.0.1:1/a"], 2,
     "zk://ahvlite:***@127.0.0.1:1/a"),
    (["controller", "run", "--store", "zk://me:hunter2@h1:x/a"], 2, "zk://me:***@h1:x/a"),
])
def test_store_mistakes(args, code, needle):
    r = ahvlite(*args, env=without_settings(), timeout_s=60,
                extra_env={"COLUMNS": "300", "HOME": "/nonexistent"})
    assert r.returncode == code, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert "hunter2" not in r.stderr + r.stdout


# The task commands (through the API) are in tests/functional/test_cli_task.py.


@pytest.mark.parametrize("daemon", ["controller", "agent"])
def test_the_daemons_run_as_their_units_run_them(daemon):
    """`ahvlite controller run` / `ahvlite agent run`, no arguments: every option comes
    from the environment file the units read (here: no store in it, so it says so)."""
    r = ahvlite(daemon, "run", env=without_settings(), timeout_s=60,
                extra_env={"COLUMNS": "300", "AHVLITE_HOST": "h1"})
    assert r.returncode == 3 and "no controller store given" in r.stderr, r.stderr
    helped = ahvlite(daemon, "run", "--help", env=without_settings(), timeout_s=60,
                     extra_env={"COLUMNS": "300"})
    for var in ("AHVLITE_STORE", "AHVLITE_HOST"):
        assert var in helped.stdout, var
    if daemon == "agent":
        assert "AHVLITE_WATCHDOG" in helped.stdout and "AHVLITE_LIBVIRT_URI" in helped.stdout
