"""The HA service and host agent on libvirt's test driver with a real SQLite store,
plus the agent's election probe against a real ZooKeeper ensemble and the lab's
watchdog process.

Each "host" is its own test-driver instance (a custom node file: private state per
connection). The host monitor is replaced by a plain object with the same two fields,
heartbeats are written the way the agent writes them, and the VM rendering of the
production wiring (designer + shared pool) is replaced by a test-driver rendering:
all of these are our own injected interfaces; libvirt and the stores are real.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ahvlite.clock import FakeClock
from ahvlite.controller.coord.ensemble import majority_electing
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.controller.ha.agent import HostAgent
from ahvlite.controller.ha.hostops import LibvirtHosts
from ahvlite.controller.ha.localvms import LibvirtLocal
from ahvlite.controller.ha.records import (
    STATUS_KEY,
    AgentDoc,
    Intent,
    StoredVm,
    agent_key,
    key,
)
from ahvlite.controller.ha.service import HaService
from ahvlite.controller.ha.settings import HaSettings
from ahvlite.controller.ha.watchdog import SocketWatchdog
from ahvlite.errors import HostUnreachable
from ahvlite.lab.services import start_local_ensemble
from ahvlite.spec.labels import HA_PRIORITY_LABEL, ROLE_LABEL
from ahvlite.spec.smallguest import SimpleGuest
from ahvlite.virt import designer, guest
from ahvlite.virt.conn import connection, open_test_node
from tests.waiting import wait_for

pytestmark = pytest.mark.functional
S = HaSettings()

NODE = """<node>
  <cpu><mhz>2000</mhz><model>i686</model><nodes>1</nodes><sockets>1</sockets>
       <cores>2</cores><threads>1</threads><active>2</active></cpu>
  <memory>{kib}</memory>
  {domains}
</node>"""

DOMAIN = """<domain type='test'>
  <name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>{mib}</memory><vcpu>1</vcpu>
  <os><type>hvm</type></os>
  <metadata><ahv:vm xmlns:ahv="https://ahvlite.io/xmlns/vm/1">{labels}<ahv:epoch>{epoch}</ahv:epoch><ahv:spec>{spec}</ahv:spec></ahv:vm></metadata>
</domain>"""


def domain_xml(name: str, mib: int, labels: dict[str, str], epoch: int = 0) -> str:
    return DOMAIN.format(
        name=name, uuid=uuid.uuid5(uuid.NAMESPACE_URL, name), mib=mib, epoch=epoch,
        spec=json.dumps({"name": name, "memory_mib": mib}),
        labels="".join(f'<ahv:label key="{k}" value="{v}"/>' for k, v in labels.items()))


def node_file(tmp: Path, host: str, memory_mib: int, vms: list[tuple[str, int, dict]]) -> Path:
    path = tmp / f"{host}.xml"
    path.write_text(NODE.format(kib=memory_mib * 1024,
                                domains="".join(domain_xml(*v) for v in vms)))
    return path


def render(conn: Any, host: str, vm: StoredVm, epoch: int) -> str:
    """The test driver's rendering of a stored spec (production: the designer)."""
    assert vm.spec is not None
    return domain_xml(vm.spec["name"], vm.spec["memory_mib"], vm.labels, epoch)


@dataclass
class Link:
    conn: Any


class Monitor:
    def __init__(self, conns: dict[str, Any]) -> None:
        self.links = {h: Link(c) for h, c in conns.items()}


Clock = FakeClock


def running(conn) -> set[str]:
    return {n for n, st in guest.list_domains(conn) if st == "running"}


def beat(coord, host: str, seq: int, pending: tuple[str, ...] = ()) -> None:
    """What the host's agent writes every heartbeat."""
    coord.put(agent_key(host), AgentDoc(host, seq, S.lease_s, S.watchdog_s, S.heartbeat_s,
                                        pending=pending).to_bytes())


class Cluster:
    def __init__(self, tmp: Path, coord, hosts: dict[str, tuple[int, list]], **kw) -> None:
        self.coord = coord
        self.conns = {h: open_test_node(node_file(tmp, h, mem, vms))
                      for h, (mem, vms) in hosts.items()}
        self.mon = Monitor(dict(self.conns))
        self.clock = Clock()
        self.seq = 0
        self.svc = HaService(coord, lambda: list(self.conns),
                             LibvirtHosts(self.mon, render, open_conn=self.conns.__getitem__),
                             lambda: S, clock=self.clock, retry_s=1.0, **kw)

    def step(self, seconds: float, alive: set[str]) -> None:
        """Let ``seconds`` pass: the agents of ``alive`` beat, then one HA round."""
        self.clock.now += seconds
        self.seq += 1
        for h in alive:
            beat(self.coord, h, self.seq)
        self.svc.round()

    def status(self) -> dict[str, Any]:
        return json.loads(self.coord.get(STATUS_KEY).value)


def test_vms_restart_only_after_the_heartbeat_stood_still_long_enough(tmp_path, leader):
    c = Cluster(tmp_path, leader, {
        "a": (4096, [("web", 256, {HA_PRIORITY_LABEL: "1"}), ("db", 512, {HA_PRIORITY_LABEL: "9"}),
                     ("cvm-a", 256, {ROLE_LABEL: "cvm"}), ("huge", 3900, {})]),
        "b": (2048, [])})
    a, b = c.conns["a"], c.conns["b"]
    c.step(0.5, {"a", "b"})
    assert {n: StoredVm.from_bytes(v.value).host for n, v in leader.children("ha/vms").items()} \
        == {"web": "a", "db": "a", "cvm-a": "a", "huge": "a"}
    # Host a is lost: its libvirt link goes and its agent's heartbeat stands still.
    c.mon.links["a"].conn = None
    c.step(0.5, {"b"})
    assert c.status()["hosts"]["a"]["verdict"] == "degraded"  # within its lease
    c.step(S.lease_s, {"b"})
    assert c.status()["hosts"]["a"]["verdict"] == "suspect"
    assert running(b) == set()  # nothing moves while the old copies may still run
    c.step(S.restart_after_s - S.lease_s - 1.0, {"b"})
    assert running(b) == set()
    c.step(0.5, {"b"})
    st = c.status()
    assert st["hosts"]["a"]["verdict"] == "fenced"
    assert running(b) == {"db", "web"}
    assert [r["vm"] for r in st["restarts"]] == ["db", "web"]  # priority order
    assert "not placed" in st["failures"]["huge"]  # 3900 MiB fit nowhere
    assert "CVM" in st["failures"]["cvm-a"]
    c.step(0.5, {"b"})
    rec = StoredVm.from_bytes(leader.get(key("db")).value)
    assert rec.host == "b" and rec.epoch == 1 and rec.intent is None
    assert rec.restarted_from == ("a",)
    # a returns; its agent had powered its copies off. Stale definitions go, and the
    # CVM (never moved) stays defined there.
    for name in ("web", "db", "cvm-a", "huge"):
        a.lookupByName(name).destroy()
    c.mon.links["a"].conn = a
    c.step(0.5, {"a", "b"})
    left = dict(guest.list_domains(a))
    assert "web" not in left and "db" not in left
    assert left["cvm-a"] == "shutoff" and left["huge"] == "shutoff"


def test_a_host_without_an_agent_is_never_fenced(tmp_path, leader):
    c = Cluster(tmp_path, leader, {"a": (4096, [("app", 256, {})]), "b": (4096, [])})
    c.step(0.5, {"b"})
    c.mon.links["a"].conn = None
    c.step(60, {"b"})
    assert c.status()["hosts"]["a"]["verdict"] == "unprotected"
    assert running(c.conns["b"]) == set()


def test_the_intent_is_written_before_the_start_and_finished_only_on_its_target(
        tmp_path, leader):
    c = Cluster(tmp_path, leader, {"a": (4096, [("app", 256, {})]), "b": (8192, []),
                                   "c": (4096, [])})
    b, cc = c.conns["b"], c.conns["c"]
    c.step(0.5, {"a", "b", "c"})
    # Make b refuse the start: a domain of the same name but another UUID exists.
    guest.define(b, designer.simple_domain_xml(SimpleGuest(
        name="app", uuid=str(uuid.uuid4()), domain_type="test", machine="pc")))
    c.mon.links["a"].conn = None
    c.step(S.restart_after_s + 0.5, {"b", "c"})
    c.step(0.5, {"b", "c"})
    rec = StoredVm.from_bytes(leader.get(key("app")).value)
    assert rec.intent == Intent("b", "a", 1, rec.intent.at, rec.intent.token)
    assert "start on b failed" in c.svc.failures["app"]
    # Retried on b only, never on c, while the intent names b and b is healthy.
    for _ in range(4):
        c.step(1.0, {"b", "c"})
    assert running(cc) == set() and running(b) == set()
    guest.find(b, "app").undefine()
    c.step(1.5, {"b", "c"})
    assert running(b) == {"app"}
    c.step(0.5, {"b", "c"})
    assert StoredVm.from_bytes(leader.get(key("app")).value).intent is None


def test_a_heartbeat_that_moves_again_cancels_the_restart(tmp_path, leader):
    c = Cluster(tmp_path, leader, {"a": (4096, [("app", 256, {})]), "b": (4096, [])})
    c.step(0.5, {"a", "b"})
    c.mon.links["a"].conn = None
    c.step(S.restart_after_s - 0.5, {"b"})
    c.step(0.5, {"a", "b"})  # a's agent is back just in time
    c.step(S.restart_after_s - 0.5, {"a", "b"})
    assert running(c.conns["b"]) == set()
    assert c.status()["hosts"]["a"]["verdict"] == "degraded"  # agent fine, libvirt lost


def test_twins_are_resolved_the_older_epoch_goes(tmp_path, leader):
    c = Cluster(tmp_path, leader, {"a": (4096, [("app", 256, {})]),
                                   "b": (4096, [("app", 256, {}, 1)])})
    # Domains in a node file start running: both run.
    assert running(c.conns["a"]) == {"app"} and running(c.conns["b"]) == {"app"}
    c.step(0.5, {"a", "b"})  # seen once: looked at again next round
    assert running(c.conns["a"]) == {"app"} and c.status()["twins_resolved"] == []
    c.step(0.5, {"a", "b"})
    assert running(c.conns["a"]) == set() and running(c.conns["b"]) == {"app"}
    assert c.status()["twins_resolved"][0]["destroyed"] == "a"


def test_a_migration_that_switches_over_between_two_reads_is_no_twin(tmp_path, leader):
    """The leader reads hosts one after another: a's copy still ran when a was read, b's
    (the destination, with the same epoch) already ran when b was read. Libvirt then
    ends a's: nothing may be powered off meanwhile."""
    c = Cluster(tmp_path, leader, {"a": (4096, [("app", 256, {})]),
                                   "b": (4096, [("app", 256, {})])})
    c.step(0.5, {"a", "b"})
    assert running(c.conns["a"]) == {"app"} and running(c.conns["b"]) == {"app"}
    c.conns["a"].lookupByName("app").destroy()  # the source's end, after the switch-over
    c.step(0.5, {"a", "b"})
    assert running(c.conns["b"]) == {"app"}
    assert c.status()["twins_resolved"] == []


class Migrating:
    """The leader's host operations, with ``host``'s copies at the paused end of a live
    migration (what libvirt reports for an incoming domain until the switch-over)."""

    def __init__(self, ops, host: str) -> None:
        self.ops, self.host = ops, host

    def __getattr__(self, name):
        return getattr(self.ops, name)

    def facts(self, host):
        fs = self.ops.facts(host)
        return [dataclasses.replace(f, migrating=True) for f in fs] if host == self.host \
            else fs


def test_the_two_ends_of_a_live_migration_are_not_twins(tmp_path, leader):
    c = Cluster(tmp_path, leader, {"a": (4096, [("app", 256, {})]),
                                   "b": (4096, [("app", 256, {})])})
    plain = c.svc.ops
    c.svc.ops = Migrating(plain, "b")
    c.step(0.5, {"a", "b"})
    c.step(0.5, {"a", "b"})
    assert running(c.conns["a"]) == {"app"} and running(c.conns["b"]) == {"app"}
    assert c.status()["twins_resolved"] == []
    c.svc.ops = plain  # the migration is over and both still run: twins after all
    c.step(0.5, {"a", "b"})
    c.step(0.5, {"a", "b"})
    assert len(running(c.conns["a"])) + len(running(c.conns["b"])) == 1


def test_hosts_in_maintenance_take_no_restarts_but_their_own_loss_counts(tmp_path, leader):
    closed = {"b"}  # b is in maintenance: the cluster state `host maintenance` writes
    c = Cluster(tmp_path, leader, {"a": (4096, [("app", 256, {})]), "b": (4096, []),
                                   "c": (4096, [("late", 256, {})])},
                closed=lambda: set(closed))
    b, cc = c.conns["b"], c.conns["c"]
    c.step(0.5, {"a", "b", "c"})
    c.mon.links["a"].conn = None
    c.step(S.restart_after_s + 0.5, {"b", "c"})
    assert running(b) == set() and running(cc) == {"app", "late"}
    # c, entering maintenance, dies with VMs still on it. They are not forgotten: with
    # b still in maintenance they wait, and once b leaves it they restart there.
    closed.add("c")
    c.mon.links["c"].conn = None
    c.step(S.restart_after_s + 0.5, {"b"})
    c.step(0.5, {"b"})
    assert running(b) == set()
    assert c.status()["hosts"]["c"]["verdict"] == "fenced"
    assert "not placed" in c.svc.failures["app"]
    closed.discard("b")
    c.step(1.5, {"b"})
    c.step(1.5, {"b"})
    assert running(b) == {"app", "late"}


# -- the host agent ------------------------------------------------------------------

class Offline:
    """Our own Coordinator seen through a switch: writes fail while ``off``."""

    def __init__(self, coord) -> None:
        self.coord = coord
        self.off = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.coord, name)

    def put(self, *a: Any, **kw: Any) -> int:
        if self.off:
            raise HostUnreachable("store: cut off")
        return self.coord.put(*a, **kw)


class Watchdog:
    """Records feeds (our own Watchdog interface; the lab's is tested below)."""

    timeout_s = 3.0

    def __init__(self) -> None:
        self.feeds = 0
        self._armed = False

    @property
    def armed(self) -> bool:
        return self._armed

    def feed(self) -> None:
        self._armed = True
        self.feeds += 1

    def disarm(self) -> None:
        self._armed = False


@pytest.fixture
def test_vms():
    # test:///default is shared by all connections in a process: the agent's own
    # connection sees what we define here. Other tests rely on its "test" domain.
    with connection("test:///default") as conn:
        before = running(conn)
        for name, labels in (("ha-agent-vm", {}), ("ha-agent-cvm", {ROLE_LABEL: "cvm"})):
            dom = guest.define(conn, domain_xml(name, 64, labels))
            dom.start()
        yield conn
        for name in ("ha-agent-vm", "ha-agent-cvm"):
            dom = guest.find(conn, name)
            if dom is not None:
                dom.destroy()
                dom.undefine()
        for name in before - running(conn):
            guest.lookup(conn, name).start()


def test_agent_fences_without_its_lease_and_restores_if_nobody_moved(tmp_path, test_vms):
    conn = test_vms
    store = SqliteCoordinator(tmp_path / "c.db")
    coord, clock, wd = Offline(store), Clock(), Watchdog()
    agent = HostAgent(coord, "h", LibvirtLocal("test:///default"), wd, lease_s=S.lease_s,
                      heartbeat_s=S.heartbeat_s, clock=clock)
    try:
        assert agent.heartbeat()
        store.put(key("ha-agent-vm"), StoredVm("ha-agent-vm", str(uuid.uuid5(
            uuid.NAMESPACE_URL, "ha-agent-vm")), "h", 64, True, {}, False, {"name": "x"},
            ).to_bytes())
        agent.tick()
        assert wd.armed and wd.feeds == 1  # protected VMs run: the watchdog is armed
        coord.off = True
        clock.now = S.lease_s - 0.1
        assert not agent.heartbeat()
        agent.tick()
        agent.feed()
        assert "ha-agent-vm" in running(conn) and wd.feeds == 2
        clock.now = S.lease_s + 0.1
        agent.feed()
        assert wd.feeds == 2  # no lease, nothing confirmed: the watchdog is not fed
        agent.tick()
        # Without the lease: the protected VM is off, the CVM is not; confirmed, so fed.
        assert "ha-agent-vm" not in running(conn) and "ha-agent-cvm" in running(conn)
        agent.feed()
        assert wd.feeds == 3 and "ha-agent-vm" in agent.fenced  # ("test" too: the
        # driver's own domain is as protected as any)
        coord.off = False
        assert agent.heartbeat()
        doc = AgentDoc.from_bytes(store.get(agent_key("h")).value)
        assert "ha-agent-vm" in doc.pending and all(f["ok"] for f in doc.fenced)
        agent.tick()
        agent.reconcile()
        # Nobody restarted it elsewhere (its record still names h, same epoch): back on.
        assert "ha-agent-vm" in running(conn) and "ha-agent-vm" not in agent.fenced
    finally:
        store.close()


def test_agent_keeps_a_fenced_vm_off_once_a_restart_is_under_way(tmp_path, test_vms):
    conn = test_vms
    store = SqliteCoordinator(tmp_path / "c.db")
    coord, clock = Offline(store), Clock()
    agent = HostAgent(coord, "h", LibvirtLocal("test:///default"), Watchdog(),
                      lease_s=S.lease_s, heartbeat_s=S.heartbeat_s, clock=clock)
    rec = StoredVm("ha-agent-vm", str(uuid.uuid5(uuid.NAMESPACE_URL, "ha-agent-vm")), "h", 64,
                   True, {}, False, {"name": "x"})
    try:
        agent.heartbeat()
        store.put(key("ha-agent-vm"), rec.to_bytes())
        coord.off = True
        clock.now = S.lease_s + 0.1
        agent.tick()
        assert "ha-agent-vm" not in running(conn)
        # Meanwhile the leader decided to start it on g.
        store.put(key("ha-agent-vm"), rec.with_intent(Intent("g", "h", 1, 0, 1)).to_bytes())
        coord.off = False
        agent.heartbeat()
        agent.reconcile()
        assert "ha-agent-vm" not in running(conn) and "ha-agent-vm" not in agent.fenced
        # And a copy started here by hand, older than the record's epoch, goes.
        guest.lookup(conn, "ha-agent-vm").start()
        agent.reconcile()
        assert "ha-agent-vm" not in running(conn)
    finally:
        store.close()


def test_a_restarted_agent_keeps_its_predecessors_lease(tmp_path, test_vms):
    conn = test_vms
    store = SqliteCoordinator(tmp_path / "c.db")
    coord, clock = Offline(store), Clock()
    coord.off = True  # the store is unreachable while the agent restarts
    agent = HostAgent(coord, "h", LibvirtLocal("test:///default"), Watchdog(),
                      lease_s=S.lease_s, heartbeat_s=S.heartbeat_s, clock=clock,
                      keep_until=2.0)
    try:
        clock.now = 1.9
        agent.tick()
        assert "ha-agent-vm" in running(conn)  # the predecessor's lease still holds
        clock.now = 2.0
        agent.tick()
        assert "ha-agent-vm" not in running(conn)
    finally:
        store.close()


# -- the election probe and the lab watchdog -------------------------------------------

def test_the_probe_tells_an_election_from_a_member_that_only_accepts_connections(tmp_path):
    ens = start_local_ensemble(tmp_path / "zk", 3)
    try:
        coord = SqliteCoordinator(tmp_path / "c.db")  # only for its url-less shape
        coord.close()
        from ahvlite.controller.coord import ensemble

        members = [(m.address, m.client_port) for m in ens.members]
        states = ensemble.probe(members, 1.0)
        assert [s.state for s in states] == ["serving"] * 3
        assert not majority_electing(states, 3)
        # Two members die: the last one has no quorum. It still accepts connections,
        # but says it is not serving; the dead ones are unreachable.
        ens.kill(1)
        ens.kill(2)
        assert wait_for(lambda: ensemble.probe(members, 1.0)[2].state == "electing", 30, 0.2)
        states = ensemble.probe(members, 1.0)
        assert [s.state for s in states] == ["unreachable", "unreachable", "electing"]
        # One member of three electing is no majority: no election evidence.
        assert not majority_electing(states, 3)
    finally:
        ens.stop()


def test_the_lab_watchdog_kills_the_agent_that_stopped_feeding_it(tmp_path):
    sock = tmp_path / "wd.sock"
    # Its own network namespace: the QEMUs it would kill are those of its namespace.
    wd = subprocess.Popen(["unshare", "--net", sys.executable, "-m", "ahvlite.lab.watchdogd",
                           "--socket", str(sock)], stderr=subprocess.PIPE, text=True)
    assert wait_for(sock.exists, 10, 0.05)
    agent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from ahvlite.controller.ha.watchdog import SocketWatchdog\n"
        f"w = SocketWatchdog(1.0, {str(sock)!r})\n"
        "for _ in range(10):\n"
        "    w.feed(); time.sleep(0.2)\n"
        "print('fed', flush=True)\n"
        "time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "fed"
        t0 = time.monotonic()
        assert agent.wait(timeout=10) == -signal.SIGKILL
        assert time.monotonic() - t0 < 3
        # A clean disarm is never fired upon.
        clean = SocketWatchdog(1.0, str(sock))
        clean.feed()
        clean.disarm()
        time.sleep(1.5)
        assert wd.poll() is None
    finally:
        for p in (agent, wd):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()


def test_a_vm_killed_on_a_healthy_host_starts_again_there_one_powered_off_stays_off(
        tmp_path, leader):
    c = Cluster(tmp_path, leader, {"a": (4096, [("crashed", 256, {}), ("stopped", 256, {})]),
                                   "b": (4096, [])})
    a = c.conns["a"]
    c.step(0.5, {"a", "b"})
    # One dies with its host's reset (or a fence whose agent restarted since); the other
    # is powered off by its owner through ahvlite (the mark comes first).
    guest.find(a, "crashed").destroy()
    dom = guest.find(a, "stopped")
    dom.mark_power(False)
    dom.destroy()
    for _ in range(4):
        c.step(0.6, {"a", "b"})
    assert running(a) == {"crashed"} and running(c.conns["b"]) == set()
    assert StoredVm.from_bytes(leader.get(key("stopped")).value).running is False
    assert StoredVm.from_bytes(leader.get(key("crashed")).value).epoch == 1
