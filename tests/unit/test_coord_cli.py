"""Controller, task and stats commands: one clear message and exit code, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def ahvlite(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("AHVLITE_") or k == "AHVLITE_DRILL_KINDS"} | (env or {})
    return subprocess.run([sys.executable, "-m", "ahvlite.cli.main", *args],
                          capture_output=True, text=True, env=full_env, timeout=60)


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["controller", "run"], 3, "no controller store given"),
    (["controller", "run", "--store", "etcd://h/x"], 2, "store='etcd://h/x'"),
    (["task", "list", "--store", "zk://h1:2181"], 2, "name a chroot"),
    (["controller", "run", "--store", "sqlite:///nonexistent-dir/c.db"], 6,
     "does not exist"),
    # `controller status` and `stats` are API clients: without a client config, say so
    (["controller", "status"], 3, "no API endpoints configured"),
    (["stats"], 3, "no API endpoints configured"),
    # a controller refuses the credential every ahvlite knows, and shows no secret
    (["controller", "run", "--store", "zk://127.0.0.1:1/ahvlite"], 2, "credential of your own"),
    (["controller", "run", "--store", "zk://ahvlite:ahvlite@127.0.0.1:1/a"], 2,
     "zk://ahvlite:***@127.0.0.1:1/a"),
    (["task", "list", "--store", "zk://me:hunter2@h1:x/a"], 2, "zk://me:***@h1:x/a"),
])
def test_store_mistakes(args, code, needle):
    r = ahvlite(*args, env={"COLUMNS": "300", "HOME": "/nonexistent"})
    assert r.returncode == code, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert "hunter2" not in r.stderr + r.stdout


def test_task_commands_on_an_embedded_store(tmp_path):
    store = f"sqlite://{tmp_path}/c.db"
    bad = ahvlite("task", "submit", "vm.create", "-p", "name=x", "--store", store)
    assert bad.returncode == 2 and "host=None" in bad.stderr
    sub = ahvlite("task", "submit", "sleep", "-p", "steps=2", "--store", store, "--json")
    task = json.loads(sub.stdout)
    assert task["state"] == "queued" and task["params"] == {"steps": 2, "step_s": 0.1}
    listed = json.loads(ahvlite("task", "list", "--store", store, "--json").stdout)
    assert [t["id"] for t in listed] == [task["id"]]
    cancelled = json.loads(ahvlite("task", "cancel", task["id"], "--store", store,
                                   "--json").stdout)
    assert cancelled["state"] == "cancelled"
    again = ahvlite("task", "cancel", task["id"], "--store", store, "--json")
    assert again.returncode == 4 and json.loads(again.stdout)["error"] == "conflict"
    waited = ahvlite("task", "wait", task["id"], "--store", store)
    assert waited.returncode == 9 and "cancelled" in waited.stderr
    missing = ahvlite("task", "show", "nope", "--store", store, "--json")
    assert missing.returncode == 3 and json.loads(missing.stdout)["error"] == "not_found"


@pytest.mark.parametrize(("params", "needle"), [
    (["uri=qemu+ssh://127.0.0.1:1/system?command=/tmp/x", "name=x"], "uri="),
    (["host=h1", "name=x", "cluster=/etc/shadow"], "cluster='/etc/shadow'"),
    (["host=../h1", "name=x"], "host='../h1'"),
])
def test_task_submit_refuses_uris_files_and_odd_hosts(tmp_path, params, needle):
    store = f"sqlite://{tmp_path}/c.db"
    args = [a for p in params for a in ("-p", p)]
    r = ahvlite("task", "submit", "vm.create", *args, "--store", store,
                env={"COLUMNS": "300"})
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2 and "Traceback" not in r.stderr
    listed = json.loads(ahvlite("task", "list", "--store", store, "--json").stdout)
    assert listed == []


def test_task_list_and_show_survive_undecodable_records(tmp_path):
    from ahvlite.controller.coord.sqlite import SqliteCoordinator

    coord = SqliteCoordinator(tmp_path / "c.db")
    coord.put("tasks/0000000000001-junk", b"\xff\xfe not json")
    coord.close()
    store = f"sqlite://{tmp_path}/c.db"
    listed = ahvlite("task", "list", "--store", store, "--json")
    assert listed.returncode == 0, listed.stderr
    (task,) = json.loads(listed.stdout)
    assert task["state"] == "failed" and "undecodable" in task["error"]
    shown = ahvlite("task", "show", "0000000000001-junk", "--store", store)
    assert shown.returncode == 0 and "undecodable" in shown.stdout


@pytest.mark.parametrize("daemon", ["controller", "agent"])
def test_the_daemons_run_as_their_units_run_them(daemon):
    """`ahvlite controller run` / `ahvlite agent run`, no arguments: every option comes
    from the environment file the units read (here: no store in it, so it says so)."""
    r = ahvlite(daemon, "run", env={"COLUMNS": "300", "AHVLITE_HOST": "h1"})
    assert r.returncode == 3 and "no controller store given" in r.stderr, r.stderr
    helped = ahvlite(daemon, "run", "--help", env={"COLUMNS": "300"})
    for var in ("AHVLITE_STORE", "AHVLITE_HOST"):
        assert var in helped.stdout, var
    if daemon == "agent":
        assert "AHVLITE_WATCHDOG" in helped.stdout and "AHVLITE_LIBVIRT_URI" in helped.stdout
