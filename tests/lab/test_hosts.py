"""Hosts on a lab: facts, a lost and regained libvirtd, SSH keys, and clear failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ahvlite.cluster import inventory
from ahvlite.cluster.legacy import open_cluster_file as load_cluster
from ahvlite.errors import HostUnreachable
from ahvlite.lab import lab
from ahvlite.lab.pki import LabCA, install_client_pki
from ahvlite.lab.sshkeys import make_keypair
from ahvlite.remote import ssh
from ahvlite.spec.lab import LabSpec
from ahvlite.virt import guest
from ahvlite.virt.hostconn import HostConnection, LinkState

from .conftest import in_host

NAME = "thost"
SUBNET = "10.213.245.0/26"


@pytest.fixture(scope="module")
def hosts_lab():
    status = lab.up(LabSpec(name=NAME, hosts=2, subnet=SUBNET))
    yield status, lab.layout_of(NAME), load_cluster(Path(status["cluster_file"]))
    lab.down(NAME)


def cli(*args: str, cluster: Path | None = None, timeout_s: float = 60):
    env = {**os.environ}
    if cluster is not None:
        env["AHVLITE_CLUSTER"] = str(cluster)
    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "ahvlite.cli.main", *args],
                            capture_output=True, text=True, env=env, timeout=timeout_s)
    return result, time.monotonic() - t0


def test_facts_match_the_host_as_seen_from_inside(hosts_lab):
    status, layout, cluster = hosts_lab
    facts = inventory.all_facts(cluster)
    assert [f.name for f in facts] == ["h1", "h2"]
    for f, host in zip(facts, layout.hosts, strict=True):
        inside = in_host(host, "sh", "-c", "grep MemTotal /proc/meminfo; nproc; hostname; "
                                           "ovs-vswitchd --version | head -1").stdout
        mem_kib = int(inside.split()[1])
        lines = inside.splitlines()
        assert f.hostname == host.hostname == lines[2]
        assert f.memory_total_mib == mem_kib // 1024
        assert f.cpu.online_cpus == int(lines[1])
        assert f.cpu.sockets * f.cpu.cores * f.cpu.threads == f.cpu.online_cpus
        pools = {p.name: p for p in f.pools}
        assert pools["lab-shared"].active and pools["lab-shared"].path == status["pool"]["path"]
        assert f.remote is not None and f.remote.ovs_version == lines[3].split()[-1]
        assert f.kvm_works == (status["domain_type"] == "kvm")
        assert f.libvirt_version.count(".") == 2


def test_host_list_and_show_report_connected_hosts(hosts_lab):
    status, _, _ = hosts_lab
    result, _ = cli("host", "list", "--json", cluster=Path(status["cluster_file"]))
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [(h["name"], h["state"]) for h in listed] == [("h1", "connected"),
                                                         ("h2", "connected")]
    assert all(h["uri"].startswith("qemu+tls://") for h in listed)
    result, _ = cli("host", "show", "h2", "--json", cluster=Path(status["cluster_file"]))
    assert json.loads(result.stdout)["hostname"] == f"{NAME}-h2"


def test_lost_libvirtd_is_noticed_at_once_and_the_connection_comes_back(hosts_lab):
    status, _layout, cluster = hosts_lab
    h2 = cluster.host("h2")
    interval, count = 1, 3
    hc = HostConnection("h2", h2.uri, keepalive_interval_s=interval, keepalive_count=count)
    changes, events = [], []
    hc.on_state(changes.append)
    hc.on_domain_event(events.append)
    hc.start()
    try:
        assert hc.wait_connected(15), hc.last_error
        stopped_at = time.monotonic()
        lab.stop_daemon(NAME, "h2", "libvirtd")
        deadline = stopped_at + interval * count + 1
        while hc.state != LinkState.DISCONNECTED and time.monotonic() < deadline:
            time.sleep(0.02)
        assert hc.state == LinkState.DISCONNECTED
        noticed = next(c for c in changes if c.state == LinkState.DISCONNECTED)
        assert noticed.at_monotonic - stopped_at <= interval * count + 1
        lab.start_daemon(NAME, "h2", "libvirtd")
        assert hc.wait_connected(30), hc.last_error
        # Events flow again on the same client object: start a small guest.
        conn = hc.conn
        assert conn is not None
        name = "evt-probe"
        xml = guest.simple_domain_xml(guest.SimpleGuest(
            name=name, uuid=str(uuid.uuid4()), domain_type=status["domain_type"],
            kernel=Path(status["guest"]["kernel"]), initrd=Path(status["guest"]["initrd"]),
            cmdline="console=ttyS0"))
        dom = guest.define(conn, xml)
        guest.start(dom)
        deadline = time.monotonic() + 10
        while not any(e.domain == name and e.event == "started" for e in events):
            assert time.monotonic() < deadline, events
            time.sleep(0.05)
        guest.destroy_and_undefine(conn, name)
    finally:
        hc.close()
    print(f"disconnect noticed after {noticed.at_monotonic - stopped_at:.3f} s "
          f"({noticed.reason})", file=sys.stderr)


def test_a_changed_host_key_is_refused_and_tofu_records_unknown_keys(hosts_lab, tmp_path):
    _, _layout, cluster = hosts_lab
    h1 = cluster.host("h1")
    assert h1.ssh is not None
    forged = tmp_path / "known_hosts"
    other_pub = make_keypair(tmp_path / "other", "imposter")
    forged.write_text(f"{h1.ssh.host} {' '.join(other_pub.split()[:2])}\n")
    target = ssh.SshTarget(host=h1.ssh.host, key=h1.ssh.key, known_hosts=forged)
    with pytest.raises(HostUnreachable, match="host key changed"):
        ssh.run(target, ["true"])
    # Even trust-on-first-use never overrides a changed key.
    with pytest.raises(HostUnreachable, match="host key changed"):
        ssh.run(ssh.SshTarget(host=h1.ssh.host, key=h1.ssh.key, known_hosts=forged,
                              trust_on_first_use=True), ["true"])
    fresh = tmp_path / "fresh_known_hosts"
    with pytest.raises(HostUnreachable, match="not in"):
        ssh.run(ssh.SshTarget(host=h1.ssh.host, key=h1.ssh.key, known_hosts=fresh), ["true"])
    tofu = ssh.SshTarget(host=h1.ssh.host, key=h1.ssh.key, known_hosts=fresh,
                         trust_on_first_use=True)
    assert ssh.run(tofu, ["hostname"]).stdout.strip() == f"{NAME}-h1"
    recorded = fresh.read_text()
    assert h1.ssh.host in recorded and recorded.split()[1] == "ssh-ed25519"
    strict = ssh.SshTarget(host=h1.ssh.host, key=h1.ssh.key, known_hosts=fresh, timeout_s=5)
    assert ssh.run(strict, ["true"]).rc == 0


def test_read_and_put_file_over_ssh(hosts_lab, tmp_path):
    _, layout, cluster = hosts_lab
    target = inventory.ssh_target(cluster.host("h2"))
    assert target is not None
    assert ssh.read_file(target, "/proc/sys/kernel/hostname").strip() == f"{NAME}-h2"
    local = tmp_path / "payload"
    local.write_text("ahvlite was here\n")
    ssh.put_file(target, local, "/run/ahvlite-payload", mode=0o600)
    remote = layout.host("h2").run_dir / "ahvlite-payload"  # the host's /run, seen from here
    assert remote.read_text() == "ahvlite was here\n"
    assert oct(remote.stat().st_mode & 0o777) == "0o600"


def test_host_add_checks_before_writing_and_remove_refuses_running_vms(hosts_lab, tmp_path):
    status, _layout, cluster = hosts_lab
    path = tmp_path / "cluster.yaml"
    shutil.copy(status["cluster_file"], path)
    result, _ = cli("host", "remove", "h2", cluster=path)
    assert result.returncode == 0, result.stderr
    h2 = cluster.host("h2")
    assert h2.ssh is not None
    result, _ = cli("host", "add", "h2", "--uri", h2.uri, "--ssh", f"root@{h2.ssh.host}",
                    "--key", str(h2.ssh.key), "--known-hosts", str(h2.ssh.known_hosts),
                    cluster=path)
    assert result.returncode == 0, result.stderr
    assert [h.name for h in load_cluster(path).hosts] == ["h1", "h2"]
    # A VM runs on h1: removing h1 is refused and the file is unchanged.
    name = "keepme"
    from ahvlite.virt.conn import connection
    with connection(cluster.host("h1").uri) as conn:
        dom = guest.define(conn, guest.simple_domain_xml(guest.SimpleGuest(
            name=name, uuid=str(uuid.uuid4()), domain_type=status["domain_type"],
            kernel=Path(status["guest"]["kernel"]), initrd=Path(status["guest"]["initrd"]),
            cmdline="console=ttyS0")))
        guest.start(dom)
        try:
            before = path.read_text()
            result, _ = cli("host", "remove", "h1", cluster=path)
            assert result.returncode == 4 and "keepme" in result.stderr
            assert path.read_text() == before
        finally:
            guest.destroy_and_undefine(conn, name)


def test_bad_hosts_fail_fast_with_one_clear_line(hosts_lab, tmp_path):
    status, layout, cluster = hosts_lab
    path = tmp_path / "cluster.yaml"
    shutil.copy(status["cluster_file"], path)
    before = path.read_text()
    rogue = tmp_path / "rogue"
    install_client_pki(LabCA.create("rogue"), rogue, name="rogue")
    unused = layout.guest_addresses[-1].ip  # in the lab subnet, nothing answers there
    h1 = cluster.host("h1")
    assert h1.ssh is not None
    wrong_key = tmp_path / "wrong"
    make_keypair(wrong_key, "wrong")
    cases = [
        (["host", "show", "nosuch"], 3, "nosuch"),
        (["host", "add", "x", "--uri", "xen://h/"], 2, "--uri='xen://h/'"),
        (["host", "add", "x", "--uri", f"qemu+tcp://{h1.ssh.host}/system"], 2,
         f"--uri='qemu+tcp://{h1.ssh.host}/system'"),
        (["host", "add", "x", "--uri", f"qemu+tls://{unused}/system"], 6, str(unused)),
        (["host", "add", "x", "--uri", f"qemu+tls://{h1.ssh.host}/system?pkipath={rogue}"],
         6, h1.ssh.host),
        (["host", "add", "x", "--uri", f"qemu+tls://{h1.ssh.host}:16514/system?"
          f"pkipath={layout.client_pki_dir}", "--ssh", f"root@{h1.ssh.host}",
          "--key", str(wrong_key), "--known-hosts", str(h1.ssh.known_hosts)],
         6, "authentication failed"),
    ]
    for args, code, needle in cases:
        result, took = cli(*args, cluster=path, timeout_s=30)
        assert result.returncode == code, (args, result.stderr)
        assert needle in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert took < 15, (args, took)
    assert path.read_text() == before


def test_a_frozen_libvirtd_is_noticed_by_keepalive(hosts_lab):
    _, _, cluster = hosts_lab
    record = next(p for p in lab.state_of(NAME).processes
                  if p.host == "h1" and p.role == "libvirtd")
    interval, count = 1, 3
    hc = HostConnection("h1", cluster.host("h1").uri, keepalive_interval_s=interval,
                        keepalive_count=count, connect_timeout_s=3)
    changes = []
    hc.on_state(changes.append)
    hc.start()
    try:
        assert hc.wait_connected(15), hc.last_error
        frozen_at = time.monotonic()
        # A stopped (not dead) daemon keeps its socket open: only keepalive can tell.
        os.kill(record.pid, signal.SIGSTOP)
        try:
            deadline = frozen_at + interval * count + 1
            while hc.state != LinkState.DISCONNECTED and time.monotonic() < deadline:
                time.sleep(0.02)
            assert hc.state == LinkState.DISCONNECTED
            lost = next(c for c in changes if c.state == LinkState.DISCONNECTED)
            assert "keepalive" in lost.reason
        finally:
            os.kill(record.pid, signal.SIGCONT)
        assert hc.wait_connected(30), hc.last_error
    finally:
        hc.close()
