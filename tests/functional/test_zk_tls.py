"""The store over TLS only: a real 3-member ZooKeeper ensemble (Debian's) with no
plaintext port, members talking TLS to each other; the controller configured by its
environment alone, its secret in a file."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from ahvlite.controller.coord import ensemble, open_store
from ahvlite.controller.coord.url import ZkTls
from ahvlite.controller.daemon import LEADER_KEY
from ahvlite.lab import processes
from ahvlite.lab.pki import LabCA, install_ahvlite_pki, install_store_client
from ahvlite.lab.services import free_ports, member_mode, start_local_ensemble, zk_argv
from ahvlite.pki import write_secret
from tests.procs import assert_on_no_command_line
from tests.waiting import wait_for

pytestmark = pytest.mark.functional
SECRET = "ahvlite:tls-test-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def zk(tmp_path_factory):
    ens = start_local_ensemble(tmp_path_factory.mktemp("zktls"), 3, tls=True)
    yield ens
    ens.stop()


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("secret") / "store.secret"
    write_secret(path, f"{SECRET}\n".encode())
    return path


def env_of(zk, secret_file, chroot: str) -> dict[str, str]:
    return {"AHVLITE_STORE": f"zk://{zk.hosts}/{chroot}",
            "AHVLITE_STORE_SECRET_FILE": str(secret_file), **zk.env()}


def refused(**kw) -> bool:
    client = KazooClient(kw.pop("hosts"), timeout=2, **kw)
    try:
        client.start(timeout=3)
    except KazooTimeoutError:
        return True
    finally:
        client.stop()
        client.close()
    return False


def test_every_member_serves_on_its_tls_port_only(zk):
    assert sorted(member_mode(m) for m in zk.members) == ["follower", "follower", "leader"]
    for m in zk.members:
        cfg = (m.data_dir / "zoo.cfg").read_text()
        assert f"secureClientPort={m.client_port}" in cfg and "clientPort=" not in cfg.replace(
            "secureClientPort=", "")
        assert "sslQuorum=true" in cfg


def test_a_client_with_the_secret_file_and_tls_dir_uses_the_store(zk, secret_file):
    env = env_of(zk, secret_file, f"t{uuid.uuid4().hex[:8]}")
    c = open_store(env["AHVLITE_STORE"], env=env)
    try:
        c.put("a", b"1")
        assert c.get("a").value == b"1"
        assert "tls-test" not in repr(c.url) and SECRET not in c.url
    finally:
        c.close()


def test_plaintext_and_strangers_cannot_connect(zk, tmp_path):
    tls = ZkTls.from_dir(zk.tls_dir)
    assert refused(hosts=zk.hosts)  # plaintext on the TLS port
    assert refused(hosts=zk.hosts, use_ssl=True, ca=str(tls.ca))  # no client certificate
    install_store_client(LabCA.create("rogue"), tmp_path, name="ahvlite-test-client")
    rogue = ZkTls.from_dir(tmp_path)  # a certificate of another CA
    assert refused(hosts=zk.hosts, use_ssl=True, ca=str(tls.ca), certfile=str(rogue.cert),
                   keyfile=str(rogue.key))
    assert not refused(hosts=zk.hosts, use_ssl=True, ca=str(tls.ca), certfile=str(tls.cert),
                       keyfile=str(tls.key), check_hostname=True)


def test_the_election_probe_reads_modes_over_tls_in_parallel(zk, secret_file):
    env = env_of(zk, secret_file, f"p{uuid.uuid4().hex[:8]}")
    c = open_store(env["AHVLITE_STORE"], env=env)
    try:
        states = c.ensemble(timeout_s=2.0)
    finally:
        c.close()
    assert [s.state for s in states] == ["serving"] * 3
    # Asked in clear, the same port proves nothing: every member counts as unreachable.
    members = [(m.address, m.client_port) for m in zk.members]
    assert [s.state for s in ensemble.probe(members, 1.0)] == ["unreachable"] * 3
    # A dead member costs the bound, not a hang (the others still answer).
    ask = ensemble.asker(ZkTls.from_dir(zk.tls_dir))
    states = ensemble.probe([*members, ("127.0.0.1", 1)], 2.0, ask=ask)
    assert [s.state for s in states] == ["serving"] * 3 + ["unreachable"]


def test_a_controller_runs_from_its_environment_and_no_command_line_holds_the_secret(
        zk, secret_file, tmp_path):
    env = {**env_of(zk, secret_file, f"c{uuid.uuid4().hex[:8]}"), "AHVLITE_HOST": "ctl-env"}
    rec = processes.spawn(["env", *(f"{k}={v}" for k, v in env.items()), sys.executable,
                           "-m", "ahvlite.cli.main", "controller", "run"],
                          log=tmp_path / "ctl.log", host="", role="controller")
    try:
        c = open_store(env["AHVLITE_STORE"], env=env)  # as a peer controller would

        def leader() -> dict | None:
            raw = c.get(LEADER_KEY)
            return json.loads(raw.value) if raw else None
        try:
            lead = wait_for(leader, 60)
        finally:
            c.close()
        assert lead["name"] == "ctl-env"
        secret = SECRET.split(":", 1)[1]
        assert_on_no_command_line(secret)
    finally:
        processes.stop([rec])
    assert secret not in (tmp_path / "ctl.log").read_text()


def test_the_playbooks_zoo_cfg_runs_debians_zookeeper_on_tls_only(tmp_path):
    """playbooks/roles/zookeeper/templates/zoo.cfg.j2 as the play renders it (one member
    here), with the key store the playbook's PKI module lays out: ZooKeeper serves."""
    import jinja2

    repo = Path(__file__).resolve().parents[2]
    ca = LabCA.create("zoo.cfg")
    pki = tmp_path / "pki"
    install_ahvlite_pki(ca, pki, hostname="h1", ip="127.0.0.1")
    install_store_client(ca, tmp_path / "client", name="c")
    port, quorum, election = free_ports(3)
    data = tmp_path / "data"
    data.mkdir()
    (data / "myid").write_text("1\n")
    text = jinja2.Template((repo / "playbooks/roles/zookeeper/templates/zoo.cfg.j2")
                           .read_text()).render(
        ansible_managed="test", zookeeper_data_dir=str(data), ahvlite_zk_port=port,
        ahvlite_mgmt_ip="127.0.0.1", zookeeper_tls_dir=str(pki / "zk-server"),
        zookeeper_members=["h1"], hostvars={"h1": {"ahvlite_mgmt_ip": "127.0.0.1"}},
        zookeeper_quorum_port=quorum, zookeeper_election_port=election)
    cfg = tmp_path / "zoo.cfg"
    cfg.write_text(text)
    rec = processes.spawn(zk_argv(cfg), log=tmp_path / "zk.log", host="", role="zk")
    try:
        tls = ZkTls.from_dir(tmp_path / "client")
        ask = ensemble.asker(tls)
        assert wait_for(lambda: ensemble.probe([("127.0.0.1", port)], 1.0, ask=ask)[0].state
                        == "serving", 60), (tmp_path / "zk.log").read_text()[-2000:]
        assert not refused(hosts=f"127.0.0.1:{port}", use_ssl=True, ca=str(tls.ca),
                           certfile=str(tls.cert), keyfile=str(tls.key), check_hostname=True)
        assert refused(hosts=f"127.0.0.1:{port}")
    finally:
        processes.stop([rec])
