"""Hosts on a lab: facts, a lost and regained libvirtd, SSH keys, and clear failures."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import pytest

from ahvlite.errors import HostUnreachable
from ahvlite.lab import lab, services
from ahvlite.lab.pki import LabCA, install_client_pki
from ahvlite.lab.sshkeys import make_keypair
from ahvlite.remote import ssh
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.lab import LabSpec
from ahvlite.spec.smallguest import SimpleGuest
from ahvlite.virt import designer, guest
from ahvlite.virt.hostconn import HostConnection, LinkState
from tests.clirun import ahv

from .conftest import in_host

NAME = "thost"
SUBNET = "10.213.245.0/26"


def cluster() -> ClusterSpec:
    """The lab's cluster as its API serves it."""
    r = ahv(NAME, "cluster", "export", "--json")
    assert r.returncode == 0, r.stderr
    return ClusterSpec.model_validate_json(r.stdout)


@pytest.fixture(scope="module")
def hosts_lab():
    status = lab.up(LabSpec(name=NAME, hosts=2, subnet=SUBNET))
    yield status, lab.layout_of(NAME), cluster()
    lab.down(NAME)


cli = partial(ahv, NAME, timeout_s=60)  # this lab's API


def root_ssh(layout, name: str, **kw) -> ssh.SshTarget:
    """SSH to a lab host from this namespace, with the lab's key (test instrumentation)."""
    return ssh.SshTarget(host=layout.host(name).ip, key=layout.ssh_key,
                         known_hosts=kw.pop("known_hosts", layout.known_hosts), **kw)


def test_facts_match_the_host_as_seen_from_inside(hosts_lab):
    status, layout, _ = hosts_lab
    result = cli("host", "facts", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert [f["name"] for f in facts] == ["h1", "h2"]
    for f, host in zip(facts, layout.hosts, strict=True):
        inside = in_host(host, "sh", "-c", "grep MemTotal /proc/meminfo; nproc; hostname; "
                                           "ovs-vswitchd --version | head -1").stdout
        mem_kib = int(inside.split()[1])
        lines = inside.splitlines()
        c = f["cpu"]
        assert f["hostname"] == host.hostname == lines[2]
        assert f["memory_total_mib"] == mem_kib // 1024
        assert c["online_cpus"] == int(lines[1])
        assert c["sockets"] * c["cores"] * c["threads"] == c["online_cpus"]
        pools = {p["name"]: p for p in f["pools"]}
        assert pools["lab-shared"]["active"]
        assert pools["lab-shared"]["path"] == status["pool"]["path"]
        assert f["remote"] is not None and f["remote"]["ovs_version"] == lines[3].split()[-1]
        assert f["kvm_works"] == (status["domain_type"] == "kvm")
        assert f["libvirt_version"].count(".") == 2


def test_host_list_and_show_report_connected_hosts(hosts_lab):
    result = cli("host", "list", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [(h["name"], h["state"]) for h in listed] == [("h1", "connected"),
                                                         ("h2", "connected")]
    assert all(h["uri"].startswith("qemu+tls://") for h in listed)
    result = cli("host", "show", "h2", "--json")
    assert json.loads(result.stdout)["hostname"] == f"{NAME}-h2"


def test_lost_libvirtd_is_noticed_at_once_and_the_connection_comes_back(hosts_lab):
    status, layout, _ = hosts_lab
    interval, count = 1, 3
    hc = HostConnection("h2", layout.libvirt_uri(layout.host("h2")),
                        keepalive_interval_s=interval, keepalive_count=count)
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
        xml = designer.simple_domain_xml(SimpleGuest(
            name=name, uuid=str(uuid.uuid4()), domain_type=status["domain_type"],
            kernel=Path(status["guest"]["kernel"]), initrd=Path(status["guest"]["initrd"]),
            cmdline="console=ttyS0"))
        dom = guest.define(conn, xml)
        dom.start()
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
    _, layout, _ = hosts_lab
    h1 = layout.host("h1")
    forged = tmp_path / "known_hosts"
    other_pub = make_keypair(tmp_path / "other", "imposter")
    forged.write_text(f"{h1.ip} {' '.join(other_pub.split()[:2])}\n")
    with pytest.raises(HostUnreachable, match="host key changed"):
        ssh.run(root_ssh(layout, "h1", known_hosts=forged), ["true"])
    # Even trust-on-first-use never overrides a changed key.
    with pytest.raises(HostUnreachable, match="host key changed"):
        ssh.run(root_ssh(layout, "h1", known_hosts=forged, trust_on_first_use=True), ["true"])
    fresh = tmp_path / "fresh_known_hosts"
    with pytest.raises(HostUnreachable, match="not in"):
        ssh.run(root_ssh(layout, "h1", known_hosts=fresh), ["true"])
    tofu = root_ssh(layout, "h1", known_hosts=fresh, trust_on_first_use=True)
    assert ssh.run(tofu, ["hostname"]).stdout.strip() == f"{NAME}-h1"
    recorded = fresh.read_text()
    assert h1.ip in recorded and recorded.split()[1] == "ssh-ed25519"
    strict = root_ssh(layout, "h1", known_hosts=fresh, timeout_s=5)
    assert ssh.run(strict, ["true"]).rc == 0


def test_read_and_put_file_over_ssh(hosts_lab, tmp_path):
    _, layout, _ = hosts_lab
    target = root_ssh(layout, "h2")
    assert ssh.read_file(target, "/proc/sys/kernel/hostname").strip() == f"{NAME}-h2"
    local = tmp_path / "payload"
    local.write_text("ahvlite was here\n")
    ssh.put_file(target, local, "/run/ahvlite-payload", mode=0o600)
    remote = layout.host("h2").run_dir / "ahvlite-payload"  # the host's /run, seen from here
    assert remote.read_text() == "ahvlite was here\n"
    assert oct(remote.stat().st_mode & 0o777) == "0o600"


def test_host_add_checks_before_writing_and_remove_refuses_running_vms(hosts_lab, tmp_path):
    status, layout, original = hosts_lab
    saved = tmp_path / "cluster.yaml"
    saved.write_text(original.dump_yaml())
    result = cli("host", "remove", "h2")
    assert result.returncode == 0, result.stderr
    assert [h.name for h in cluster().hosts] == ["h1"]
    h2 = original.host("h2")
    assert h2.ssh is not None
    labels = [a for k, v in h2.labels.items() for a in ("--label", f"{k}={v}")]
    # --key and --known-hosts name the controllers' files: the ones the lab's entry names.
    result = cli("host", "add", "h2", "--uri", h2.uri, "--ssh", f"root@{h2.ssh.host}",
                    "--key", str(h2.ssh.key), "--known-hosts", str(h2.ssh.known_hosts),
                    *labels)
    assert result.returncode == 0, result.stderr
    assert [h.name for h in cluster().hosts] == ["h1", "h2"]
    # Back to the lab's own entry (its OVSDB remote too): apply the saved document.
    result = cli("cluster", "apply", "-f", str(saved))
    assert result.returncode == 0, result.stderr
    assert cluster() == original
    # A VM runs on h1: removing h1 is refused and the cluster is unchanged.
    name = "keepme"
    from ahvlite.virt.conn import connection
    with connection(layout.libvirt_uri(layout.host("h1"))) as conn:
        dom = guest.define(conn, designer.simple_domain_xml(SimpleGuest(
            name=name, uuid=str(uuid.uuid4()), domain_type=status["domain_type"],
            kernel=Path(status["guest"]["kernel"]), initrd=Path(status["guest"]["initrd"]),
            cmdline="console=ttyS0")))
        dom.start()
        try:
            result = cli("host", "remove", "h1")
            assert result.returncode == 4 and "keepme" in result.stderr
            assert cluster() == original
        finally:
            guest.destroy_and_undefine(conn, name)


def test_bad_hosts_fail_fast_with_one_clear_line(hosts_lab, tmp_path):
    _, layout, original = hosts_lab
    # Files the controllers may name live under the lab's state directory (an allowed
    # root); a file anywhere else is refused before anything is tried.
    rogue = layout.root / "rogue-pki"
    install_client_pki(LabCA.create("rogue"), rogue, name="rogue")
    unused = layout.guest_addresses[-1].ip  # in the lab subnet, nothing answers there
    h1 = original.host("h1")
    assert h1.ssh is not None
    wrong_key = layout.root / "wrong-key"
    make_keypair(wrong_key, "wrong")
    # The leader reads it: every controller has its copy at the same path (each host's
    # private /var/lib/ahvlite hides the lab directory, as real hosts do not share one).
    for h in layout.hosts:
        inside = services.inside(h, wrong_key)
        inside.parent.mkdir(parents=True, exist_ok=True)
        inside.write_bytes(wrong_key.read_bytes())
        inside.chmod(0o600)
    elsewhere = tmp_path / "key"
    make_keypair(elsewhere, "elsewhere")
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
        (["host", "add", "x", "--uri", f"qemu+tls://{unused}/system", "--ssh",
          f"root@{unused}", "--key", str(elsewhere)], 2, "ssh.key="),
    ]
    for args, code, needle in cases:
        started = time.monotonic()
        result = cli(*args, timeout_s=30)
        took = time.monotonic() - started
        assert result.returncode == code, (args, result.stderr)
        assert needle in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert took < 15, (args, took)
    assert cluster() == original


def test_a_frozen_libvirtd_is_noticed_by_keepalive(hosts_lab):
    _, layout, _ = hosts_lab
    record = next(p for p in lab.state_of(NAME).processes
                  if p.host == "h1" and p.role == "libvirtd")
    interval, count = 1, 3
    hc = HostConnection("h1", layout.libvirt_uri(layout.host("h1")), keepalive_interval_s=interval,
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
            # Listeners hear of it on the connection's own thread, just after.
            while not any(c.state == LinkState.DISCONNECTED for c in changes) \
                    and time.monotonic() < deadline + 2:
                time.sleep(0.02)
            lost = next(c for c in changes if c.state == LinkState.DISCONNECTED)
            assert "keepalive" in lost.reason
        finally:
            os.kill(record.pid, signal.SIGCONT)
        assert hc.wait_connected(30), hc.last_error
    finally:
        hc.close()
