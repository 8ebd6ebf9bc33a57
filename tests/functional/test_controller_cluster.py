"""Three controller processes on a real 3-member ZooKeeper ensemble.

VMs for the task drills live in a private libvirtd (its own mount namespace, only
libvirt's QEMU driver loaded) so every controller process sees the same domains. Tasks
name hosts of the controllers' cluster, never URIs: the drill's controllers run in
mount namespaces whose /run/libvirt is that libvirtd's socket directory, so their
cluster's one host is plain ``qemu:///system``, as on a real host.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest

from ahvlite.controller.coord import open_store
from ahvlite.controller.daemon import LEADER_KEY
from ahvlite.controller.kinds import registry
from ahvlite.controller.status import controller_status
from ahvlite.controller.tasks import TaskState, TaskStore
from ahvlite.lab import processes
from ahvlite.lab.services import controller_argv, member_mode, start_local_ensemble
from ahvlite.spec.smallguest import SimpleGuest
from ahvlite.virt import designer, guest
from ahvlite.virt.conn import local_socket_connection
from tests.apicluster import client_env, make_pki
from tests.clirun import ahvlite
from tests.waiting import wait_for

pytestmark = pytest.mark.functional
FAILOVER_BOUND_S = 5.0


@pytest.fixture(scope="module")
def zk(tmp_path_factory):
    ens = start_local_ensemble(tmp_path_factory.mktemp("zk3"), 3)
    yield ens
    ens.stop()


@pytest.fixture(scope="module")
def libvirt_sock(tmp_path_factory):
    """A libvirtd of our own: QEMU driver only, its state on tmpfs in its mount namespace."""
    d = tmp_path_factory.mktemp("lv")
    (d / "drivers").mkdir()
    (d / "drivers" / "libvirt_driver_qemu.so").symlink_to(
        "/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so")
    (d / "libvirtd.conf").write_text(
        f'unix_sock_dir = "{d}"\nunix_sock_rw_perms = "0700"\nauth_unix_rw = "none"\n'
        f'auth_unix_ro = "none"\nlog_outputs = "3:file:{d}/libvirtd.log"\n')
    script = ("for m in /run /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt;"
              " do mount -t tmpfs tmpfs $m || exit 1; done;"
              " printf 'user = \"root\"\\ngroup = \"root\"\\n' > /etc/libvirt/qemu.conf;"
              f" exec env LIBVIRT_DRIVER_DIR={d}/drivers libvirtd --config {d}/libvirtd.conf")
    rec = processes.spawn(["unshare", "-m", "sh", "-c", script], log=d / "out.log", host="",
                          role="libvirtd-test")
    sock = d / "libvirt-sock"
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with local_socket_connection(sock) as conn:  # the first define probes QEMU
            guest.define(conn, designer.simple_domain_xml(SimpleGuest(
                name="warmup", uuid=str(uuid.uuid4()), domain_type="qemu", machine="pc")))
            guest.destroy_and_undefine(conn, "warmup")
        yield sock
    finally:
        processes.stop([rec])


def with_libvirt_run(sock, argv: list[str]) -> list[str]:
    """``argv`` in a mount namespace whose /run/libvirt is ``sock``'s directory."""
    script = ("mount -t tmpfs tmpfs /run && mkdir /run/libvirt && "
              f"mount --bind {sock.parent} /run/libvirt && exec \"$@\"")
    return ["unshare", "-m", "sh", "-c", script, "controller", *argv]


@pytest.fixture
def cluster(zk, tmp_path, request):
    url = zk.url(f"c{uuid.uuid4().hex[:8]}")
    sock = request.getfixturevalue("libvirt_sock") if "libvirt_sock" in \
        request.fixturenames else None
    recs = {}
    pki = make_pki(tmp_path / "pki")  # each controller serves the API (the CLI's way in)
    for i in (1, 2, 3):
        name = f"ctl{i}"
        api = ["--api-listen", "127.0.0.1:0", "--api-cert", str(pki / "server.pem"),
               "--api-key", str(pki / "server-key.pem"), "--api-ca", str(pki / "ca.pem"),
               "--api-uploads", str(tmp_path / f"uploads-{name}")]
        argv = controller_argv(name, url, extra=api)
        if sock is not None:
            cluster_file = tmp_path / "cluster.yaml"
            cluster_file.write_text("name: cc\nhosts:\n  - name: lv\n    uri: qemu:///system\n")
            argv = with_libvirt_run(sock, controller_argv(
                name, url, extra=["--cluster", str(cluster_file), *api]))
        recs[name] = processes.spawn(argv, log=tmp_path / f"{name}.log", host="", role=name)
    coord = open_store(url)
    try:
        yield url, coord, recs
    finally:
        coord.close()
        processes.stop(list(recs.values()))




def acting_leader(coord):
    rec = coord.get(LEADER_KEY)
    return json.loads(rec.value) if rec else None


def test_one_leader_and_failover_within_the_bound_after_sigkill(cluster, tmp_path):
    _url, coord, recs = cluster
    first = wait_for(lambda: acting_leader(coord), 20)
    assert first and first["name"] in recs
    st = wait_for(lambda: (s := controller_status(coord)) and len(s["members"]) == 3 and s, 10)
    assert st["leader"]["name"] == first["name"] and st["leader"]["pid"] == first["pid"]
    assert [m["name"] for m in st["members"] if m["leader"]] == [first["name"]]
    apis = wait_for(lambda: (a := [json.loads(v).get("api")
                                   for v in coord.members().values()]) and all(a) and a, 10)
    out = ahvlite("controller", "status", "--json", timeout_s=30,
                  env=client_env(tmp_path / "pki", *apis))
    cli = json.loads(out.stdout)
    assert {"name", "host", "pid"} <= set(cli["leader"]) and len(cli["members"]) == 3

    os.kill(recs[first["name"]].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    new = wait_for(lambda: (a := acting_leader(coord)) and a["token"] != first["token"] and a,
                   FAILOVER_BOUND_S + 5)
    took = time.monotonic() - killed_at
    assert new and new["name"] != first["name"] and new["token"] > first["token"]
    assert took <= FAILOVER_BOUND_S, f"failover took {took:.2f} s"
    assert first["name"] not in [m["name"] for m in controller_status(coord)["members"]]


def test_leader_killed_mid_vm_create_makes_each_vm_once(libvirt_sock, cluster):
    _, coord, recs = cluster
    first = wait_for(lambda: acting_leader(coord), 20)
    store = TaskStore(coord)
    names = [f"drill-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    # a: killed after its define is recorded; b: killed before it defines. The holds
    # are long enough that a loaded machine cannot finish either before the kill.
    a = store.submit("vm.create", {"host": "lv", "name": names[0], "domain_type": "qemu",
                                   "hold_s": 6.0}, registry())
    assert wait_for(lambda: "define" in store.load(a.id)[0].steps_done, 15)
    b = store.submit("vm.create", {"host": "lv", "name": names[1], "domain_type": "qemu",
                                   "hold_s": 6.0}, registry())
    assert wait_for(lambda: store.load(b.id)[0].state == TaskState.RUNNING, 5)
    assert "define" not in store.load(b.id)[0].steps_done
    os.kill(recs[first["name"]].pid, signal.SIGKILL)

    ends = [store.wait(t.id, 30) for t in (a, b)]
    for end in ends:
        assert end.state == TaskState.SUCCEEDED, end.error
        assert end.attempts == 2 and end.owner != first["name"]
        assert "resumed" in end.message or end.message == "done"
    assert ends[0].steps_done["define"] == "defined"
    with local_socket_connection(libvirt_sock) as conn:
        domains = [n for n, _ in guest.list_domains(conn)]
    assert [domains.count(n) for n in names] == [1, 1]


def test_killing_one_zookeeper_member_keeps_the_cluster_working(cluster, zk):
    _, coord, _ = cluster
    assert wait_for(lambda: acting_leader(coord), 20)
    zk_leader = next(m for m in zk.members if member_mode(m) == "leader")
    zk.kill(zk_leader.myid)
    store = TaskStore(coord)
    t = store.submit("sleep", {"steps": 2, "step_s": 0.1}, registry())
    end = store.wait(t.id, 30)
    assert end.state == TaskState.SUCCEEDED
    before = acting_leader(coord)
    assert wait_for(lambda: (a := acting_leader(coord)) and a["acted_at"] > before["acted_at"], 10)
    assert controller_status(coord)["leader"] is not None
