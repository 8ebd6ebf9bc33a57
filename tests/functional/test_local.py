"""`ahvlite local`: a newcomer's one-host cluster, a real controller process on the
SQLite store, reached by the CLI through the API with the client config it wrote."""

from __future__ import annotations

import json
import os
import socket
from functools import partial
from pathlib import Path

import pytest

from tests.clirun import ahvlite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def home(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AHVLITE_")}
    env.update(HOME=str(tmp_path), AHVLITE_CONFIG=str(tmp_path / "client.yaml"),
               COLUMNS="200")
    d = tmp_path / "local"

    ahv = partial(ahvlite, env=env, timeout_s=120)

    yield tmp_path, d, ahv
    ahv("local", "down", "--dir", str(d))


def test_local_up_serves_the_cli_through_the_api_and_down_stops_it(home):
    tmp, d, ahv = home
    listen = f"127.0.0.1:{_free_port()}"
    up = ahv("local", "up", "--uri", "test:///default", "--pool", "default-pool",
             "--listen", listen, "--dir", str(d), "--json")
    assert up.returncode == 0, up.stderr + up.stdout
    first = json.loads(up.stdout)
    assert first["cluster_created"] and first["api"] == f"https://{listen}"
    assert (tmp / "client.yaml").read_text().startswith("# written by ahvlite local up")
    # The key material is root's alone.
    assert (d / "pki" / "api-key.pem").stat().st_mode & 0o077 == 0
    assert (tmp / "client.yaml").stat().st_mode & 0o077 == 0

    listed = ahv("vm", "list", "--json")  # no cluster file, no AHVLITE_API: the config
    assert listed.returncode == 0, listed.stderr + listed.stdout
    assert [v["name"] for v in json.loads(listed.stdout)] == ["test"]  # the test driver's

    again = ahv("local", "up", "--uri", "test:///default", "--pool", "default-pool",
                "--listen", listen, "--dir", str(d), "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["pid"] == first["pid"] and not second["cluster_created"]
    assert ahv("local", "status", "--dir", str(d)).returncode == 0

    down = ahv("local", "down", "--dir", str(d))
    assert down.returncode == 0 and str(first["pid"]) in down.stdout
    assert not Path(f"/proc/{first['pid']}/cmdline").exists() or \
        not Path(f"/proc/{first['pid']}/cmdline").read_bytes()
    assert ahv("local", "status", "--dir", str(d)).returncode == 1
    with (tmp / "client.yaml").open("a") as f:
        f.write("deadline_s: 2\n")  # no controller will come back: do not wait 30 s
    gone = ahv("vm", "list", "--json")
    assert gone.returncode != 0 and "Traceback" not in gone.stderr


def test_local_up_keeps_a_client_config_it_did_not_write(home):
    tmp, d, ahv = home
    mine = tmp / "client.yaml"
    mine.write_text("endpoints: [https://10.0.0.1:9440]\n")
    out = ahv("local", "up", "--uri", "test:///default", "--listen",
              f"127.0.0.1:{_free_port()}", "--dir", str(d))
    assert out.returncode != 0 and "not written by `ahvlite local up`" in out.stderr
    assert mine.read_text() == "endpoints: [https://10.0.0.1:9440]\n"
    assert not d.exists()  # refused before anything was made


def test_local_up_refuses_a_bad_listen_address_before_making_anything(home):
    _, d, ahv = home
    out = ahv("local", "up", "--listen", "localhost", "--dir", str(d), "--json")
    err = json.loads(out.stdout)
    assert out.returncode == 2 and err["message"].startswith("listen='localhost'")
    assert not d.exists()
