"""`ahvlite host provision` runs playbooks/host.yml over SSH against a lab host.

A lab host shares this machine's root filesystem except its private directories, so
the run uses the lab profile (packages only verified, no bootloader, no systemd) and
the test checks that nothing outside the host's private directories changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import partial
from pathlib import Path

import pytest
import yaml

import ahvlite
from ahvlite.lab import lab
from ahvlite.spec.lab import LabSpec
from ahvlite.virt.conn import connection
from tests.clirun import ahv
from tests.lab.conftest import in_host

NAME = "tprov"
SUBNET = "10.213.252.0/26"
# What the play would touch on a real host and must never touch here (this machine).
ROOT_PATHS = ("/etc/default", "/etc/modules-load.d", "/etc/libvirt", "/etc/systemd",
              "/etc/pki", "/etc/openvswitch", "/etc/zookeeper", "/etc/ahvlite",
              "/usr/local/bin", "/opt/ahvlite")


def tree_digest(paths=ROOT_PATHS) -> dict[str, str]:
    """Path -> mode + content digest of every file and link under ``paths``."""
    out: dict[str, str] = {}
    for top in paths:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in filenames + [d for d in dirnames if os.path.islink(
                    os.path.join(dirpath, d))]:
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                    if os.path.islink(p):
                        out[p] = f"link {os.readlink(p)}"
                    else:
                        out[p] = f"{st.st_mode:o} " + hashlib.sha256(
                            Path(p).read_bytes()).hexdigest()
                except OSError as exc:
                    out[p] = f"unreadable {exc.errno}"
    return out


cli = partial(ahv, NAME, timeout_s=600)  # this lab's API


def provision(*args: str) -> dict:
    """`host provision h1`: ansible runs here, its inventory from the lab's API."""
    r = cli("host", "provision", "h1", "--json", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def break_host(host) -> None:
    """Undo two things the play owns: virbr0, and a line of libvirtd.conf."""
    assert in_host(host, "ip", "link", "del", "virbr0").returncode == 0
    assert in_host(host, "sed", "-i", "/^listen_tcp/d", "/etc/libvirt/libvirtd.conf"
                   ).returncode == 0


def virbr0(host) -> str:
    r = in_host(host, "ip", "-4", "-o", "addr", "show", "dev", "virbr0")
    return r.stdout if r.returncode == 0 else ""


def listen_tcp_lines(host) -> list[str]:
    r = in_host(host, "grep", "^listen_tcp", "/etc/libvirt/libvirtd.conf")
    return r.stdout.splitlines()


@pytest.fixture(scope="module")
def provlab():
    status = lab.up(LabSpec(name=NAME, hosts=1, subnet=SUBNET))
    layout = lab.plan_layout(LabSpec(name=NAME, hosts=1, subnet=SUBNET), lab.lab_root(NAME))
    yield status, layout.host("h1")
    if NAME in lab.list_labs():
        lab.down(NAME)


@pytest.fixture(scope="module")
def first_run(provlab):
    status, host = provlab
    break_host(host)
    before = tree_digest()
    result = provision()
    return status, host, result, before, tree_digest()


def test_first_run_configures_the_host(first_run):
    _, host, result, _, _ = first_run
    assert result["status"] == "successful" and result["failures"] == []
    changed = {c["task"]: c["detail"] or "" for c in result["changes"]}
    assert "virbr0" in changed["Bridges, uplink bond and virbr0 from the cluster file"]
    assert "listen_tcp" in changed["Configure libvirtd to listen with TLS on the management "
                                   "address"]
    # libvirtd answers over TLS, verified with the cluster CA from the root namespace.
    layout = lab.layout_of(NAME)
    with connection(layout.libvirt_uri(layout.host("h1")), timeout_s=20) as conn:
        assert conn.getHostname() == host.hostname
    assert listen_tcp_lines(host) == ["listen_tcp = 0"]
    assert "192.168.5.1/24" in virbr0(host)
    # br0 with its bond, as ahvlite's own network code reports it.
    shown = cli("net", "show", "h1", "--json")
    assert shown.returncode == 0, shown.stderr
    (br0,) = [b for b in json.loads(shown.stdout)[0]["bridges"] if b["name"] == "br0"]
    (bond,) = br0["bonds"]
    assert bond["name"] == "br0-up"
    assert sorted(m["name"] for m in bond["members"]) == ["eth0", "eth1"]


def test_ahvlite_is_installed_and_configured_as_on_a_real_host(first_run):
    _status, host, result, _, _ = first_run
    layout = lab.layout_of(NAME)
    # Installed (from this checkout's wheel, offline) in the host's private /opt/ahvlite.
    version = in_host(host, "/opt/ahvlite/bin/ahvlite", "version", timeout_s=60)
    assert version.returncode == 0 and version.stdout.strip() == ahvlite.__version__, version
    assert in_host(host, "/opt/ahvlite/bin/ahvlite", "agent", "run", "--help",
                   timeout_s=60).returncode == 0
    # controller.env: every option of both daemons, and no secret.
    env_text = in_host(host, "cat", "/etc/ahvlite/controller.env").stdout
    env = dict(line.split("=", 1) for line in env_text.splitlines()
               if line and not line.startswith("#"))
    secret = layout.store_secret_file.read_text().strip().partition(":")[2]
    assert len(secret) >= 24 and secret not in env_text
    assert env["AHVLITE_HOST"] == "h1" and env["AHVLITE_API_LISTEN"] == f"{host.ip}:9440"
    assert env["AHVLITE_STORE"] == f"zk://{host.ip}:2281/ahvlite"
    assert env["AHVLITE_WATCHDOG"] == "unix:/run/ahvlite/watchdog.sock"  # never /dev's
    # The lab's own credential, readable by root only; the files the env file names.
    st = in_host(host, "stat", "-c", "%a %U", "/etc/ahvlite/store.secret",
                 "/etc/ahvlite/controller.env", "/etc/ahvlite/pki/api-key.pem",
                 "/etc/ahvlite/pki/zk/client-key.pem").stdout.split("\n")
    assert st[:4] == ["600 root"] * 4, st
    assert in_host(host, "cat", "/etc/ahvlite/store.secret").stdout == f"ahvlite:{secret}\n"
    for key in ("AHVLITE_API_CERT", "AHVLITE_API_KEY", "AHVLITE_API_CA"):
        assert in_host(host, "test", "-s", env[key]).returncode == 0, key
    for name in ("ca.pem", "client.pem", "client-key.pem"):
        assert in_host(host, "test", "-s", f"{env['AHVLITE_STORE_TLS_DIR']}/{name}"
                       ).returncode == 0
    # QEMU's migration TLS, and libvirtd admitting exactly the host and the admin.
    for name in ("ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem",
                 "client-key.pem"):
        assert in_host(host, "test", "-s", f"/etc/pki/qemu/{name}").returncode == 0, name
    allowed = in_host(host, "grep", "^tls_allowed_dn_list", "/etc/libvirt/libvirtd.conf")
    assert allowed.stdout.strip() == (
        f'tls_allowed_dn_list = ["O=ahvlite lab,CN={host.hostname}", '
        f'"O=ahvlite lab,OU=ahvlite-admins,CN=ahvlite-{NAME}-client"]')
    # Nothing of systemd's, and no softdog: a lab host shares this machine's kernel.
    tasks = {c["task"] for c in result["changes"]}
    assert not any("watchdog module" in t or "systemd unit" in t for t in tasks), tasks
    assert "Install ahvlite into its virtualenv" in tasks


def test_nothing_outside_the_lab_hosts_private_directories_changed(first_run):
    *_, before, after = first_run
    assert before, "the snapshot saw no files at all"
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert changed == set()


def test_second_run_changes_nothing(first_run):
    again = provision()
    assert again["changed"] == 0, again["changes"]
    assert again["stats"]["h1"]["ok"] > 10


def test_check_reports_what_would_change_and_changes_nothing(first_run):
    _, host, *_ = first_run
    break_host(host)
    checked = provision("--check", "--tags", "network,libvirt")
    assert checked["check"] is True
    tasks = {c["task"]: c["detail"] or "" for c in checked["changes"]}
    assert "create Linux bridge virbr0" in tasks[
        "Bridges, uplink bond and virbr0 from the cluster file"]
    assert "listen_tcp" in tasks["Configure libvirtd to listen with TLS on the management "
                                 "address"]
    assert len(tasks) == 2, tasks
    # ... and nothing was done.
    assert virbr0(host) == ""
    assert listen_tcp_lines(host) == []


def test_a_host_key_nobody_vouches_for_fails_with_host_task_and_message(first_run, tmp_path):
    cluster = json.loads(cli("cluster", "export", "--json").stdout)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    cluster["hosts"][0]["ssh"]["known_hosts"] = str(empty)
    cf = tmp_path / "cluster.yaml"
    cf.write_text(yaml.safe_dump(cluster))
    r = cli("host", "provision", "h1", "-f", str(cf))  # this file's SSH settings
    assert r.returncode == 6, r.stdout + r.stderr  # HostUnreachable
    assert "host h1" in r.stderr and "Gathering Facts" in r.stderr
    assert "Host key verification failed" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr
