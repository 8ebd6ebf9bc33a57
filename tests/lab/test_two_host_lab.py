"""A 2-host lab end to end: TLS, OVS bond, SSH, guest ping, live migration, locks, down."""

from __future__ import annotations

import ipaddress
import socket
import sys
import uuid
from pathlib import Path

import pytest

from ahvlite.errors import AhvliteError, HostUnreachable
from ahvlite.lab import guests, lab, processes
from ahvlite.lab.layout import BOND, OVS_BRIDGE
from ahvlite.lab.pki import LabCA, install_client_pki
from ahvlite.net.ovs import ops as ovs_ops
from ahvlite.net.ovs.api import ovsdb
from ahvlite.remote import ssh
from ahvlite.spec.lab import LabSpec
from ahvlite.spec.smallguest import SimpleGuest
from ahvlite.virt import designer, guest, migration
from ahvlite.virt.conn import connection
from ahvlite.virt.console import Console
from tests.clirun import ahvlite

from .conftest import assert_gone, in_host

NAME = "t2"
SUBNET = "10.213.240.0/26"


@pytest.fixture(scope="module")
def two_hosts():
    status = lab.up(LabSpec(name=NAME, hosts=2, subnet=SUBNET))
    layout = lab.layout_of(NAME)
    yield status, layout
    if lab.list_labs().count(NAME):
        lab.down(NAME)


def test_status_reports_what_the_issue_promises(two_hosts):
    status, _layout = two_hosts
    assert status["name"] == NAME and status["subnet"] == SUBNET
    assert status["domain_type"] in ("kvm", "qemu")
    assert Path(status["cluster_file"]).exists()
    assert [h["name"] for h in status["hosts"]] == ["h1", "h2"]
    for h in status["hosts"]:
        assert h["up"], h
        assert ipaddress.ip_address(h["address"]) in ipaddress.ip_network(SUBNET)
        assert set(h["ssh"]) >= {"host", "user", "key", "known_hosts"}
    assert status["pool"]["name"] == "lab-shared"
    assert all(Path(status["guest"][k]).exists() for k in ("kernel", "initrd", "disk"))


def test_both_libvirtds_answer_over_tls_and_nothing_listens_on_plain_tcp(two_hosts):
    _, layout = two_hosts
    for host in layout.hosts:
        with connection(layout.libvirt_uri(host)) as conn:
            assert conn.getHostname() == host.hostname
            assert conn.storagePoolLookupByName("lab-shared").isActive()
        with pytest.raises(ConnectionRefusedError), socket.create_connection(
                (host.ip, 16509), timeout=3):
            pass


def test_a_client_certificate_from_another_ca_is_refused(two_hosts, tmp_path):
    _, layout = two_hosts
    install_client_pki(LabCA.create("rogue"), tmp_path, name="rogue")
    host = layout.hosts[0]
    with (pytest.raises(AhvliteError),
          connection(f"{host.libvirt_tls_uri}?pkipath={tmp_path}") as conn):
        conn.getHostname()


def test_each_host_has_br0_with_a_two_member_active_backup_bond(two_hosts):
    _, layout = two_hosts
    for host in layout.hosts:
        with ovsdb(f"unix:{host.ovsdb_sock}") as api:
            bridges, _ = ovs_ops.observe_ovs(api)
        bond = next(b for b in bridges if b.name == OVS_BRIDGE).port(BOND)
        assert bond is not None
        assert bond.interfaces == ("eth0", "eth1")
        assert bond.bond_mode == "active-backup"
        assert bond.active_member in ("eth0", "eth1")
        shown = in_host(host, "ip", "-4", "-o", "addr", "show", "dev", OVS_BRIDGE).stdout
        assert str(host.address) in shown
        virbr0 = in_host(host, "ip", "-4", "-o", "addr", "show", "dev", "virbr0").stdout
        assert "192.168.5.1/24" in virbr0


def test_ssh_accepts_the_lab_key_and_verifies_host_keys(two_hosts, tmp_path):
    status, layout = two_hosts
    for h, host in zip(status["hosts"], layout.hosts, strict=True):
        target = ssh.SshTarget(host=h["ssh"]["host"], key=Path(h["ssh"]["key"]),
                               known_hosts=Path(h["ssh"]["known_hosts"]))
        assert ssh.run(target, ["hostname"]).stdout.strip() == host.hostname
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    stranger = ssh.SshTarget(host=layout.hosts[0].ip, key=layout.ssh_key, known_hosts=empty)
    with pytest.raises(HostUnreachable):
        ssh.run(stranger, ["true"])


@pytest.fixture(scope="module")
def guest_on_h1(two_hosts):
    _, layout = two_hosts
    state = lab.state_of(NAME)
    g = guests.boot_from_disk(layout, state, layout.host("h1"), "g1",
                              str(layout.guest_addresses[0]))
    guests.record(layout, state, [g])
    guests.wait_ready(layout, g, timeout_s=180)
    return g


def _ping_from(host, ip: str) -> bool:
    return in_host(host, "ping", "-c", "3", "-W", "2", ip).returncode == 0


def test_guest_on_h1_answers_ping_from_h2(two_hosts, guest_on_h1):
    _, layout = two_hosts
    assert _ping_from(layout.host("h2"), guest_on_h1.ip)


def test_guest_live_migrates_h1_to_h2_and_still_answers(two_hosts, guest_on_h1):
    _, layout = two_hosts
    h1, h2 = layout.host("h1"), layout.host("h2")
    with connection(layout.libvirt_uri(h1)) as conn:
        dom = guest.lookup(conn, guest_on_h1.name)
        job = migration.MigrationJob(
            dom, dest_uri=h2.libvirt_tls_uri, migrate_uri=f"tcp://{h2.ip}",
            options=migration.MigrationOptions(auto_converge=False,
                                               same_kernel_storage=True))
        job.start()
        while not job.wait(0.5):
            pass
        assert job.error is None, job.error
        assert guest_on_h1.name not in [n for n, _ in guest.list_domains(conn)]
    with connection(layout.libvirt_uri(h2)) as conn:
        result = migration.completed_stats(conn, guest_on_h1.name)
        assert result.get("downtime") is not None  # QEMU's measured downtime
        dom = guest.lookup(conn, guest_on_h1.name)
        assert dom.state() == "running"
        assert dom.dom.isPersistent()  # libvirt itself: defined on h2 for good
        with Console(conn, dom) as con:
            rc, out = con.run("hostname")
        assert (rc, out.splitlines()[-1]) == (0, "g1")
    assert _ping_from(h1, guest_on_h1.ip)
    print(f"migration: {result}", file=sys.stderr)


def test_shared_lockspace_stops_a_second_host_opening_the_same_disk(two_hosts, guest_on_h1):
    _, layout = two_hosts
    state = lab.state_of(NAME)
    running_on = next(h for h in layout.hosts
                  if guest_on_h1.name in [n for n, _ in _domains(layout, h)])
    other = next(h for h in layout.hosts if h is not running_on)
    xml = designer.simple_domain_xml(SimpleGuest(
        name="g1-copy", uuid=str(uuid.uuid4()), domain_type=state.domain_type,
        disk=Path(guest_on_h1.disk)))
    with connection(layout.libvirt_uri(other)) as conn:
        dom = guest.define(conn, xml)
        try:
            with pytest.raises(AhvliteError, match=r"(?i)lock|resource busy"):
                dom.start()
            assert dom.state() == "shutoff"
        finally:
            guest.destroy_and_undefine(conn, "g1-copy")


def _domains(layout, host):
    with connection(layout.libvirt_uri(host)) as conn:
        return guest.list_domains(conn)


def test_lab_up_refuses_a_name_in_use_by_a_running_lab(two_hosts):
    result = ahvlite("lab", "up", "--name", NAME, "--hosts", "2", "--subnet", SUBNET,
                     timeout_s=60)
    assert result.returncode == 4, result.stderr
    assert "already running" in result.stderr
    assert lab.status(NAME)["hosts"][0]["up"]


def test_lab_down_leaves_no_namespace_process_link_or_mount(two_hosts, guest_on_h1):
    state = lab.state_of(NAME)
    pids = list(state.processes)
    for host in lab.layout_of(NAME).hosts:
        pids += processes.pids_in_netns(Path("/run/netns") / host.netns)
    assert any(p.role == "leftover" for p in pids)  # QEMU, started by libvirtd
    lab.down(NAME)
    assert_gone(NAME, pids)
