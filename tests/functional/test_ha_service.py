"""The HA service and host agent on libvirt's test driver with a real SQLite store.

Each "host" is its own test-driver instance (a custom node file: private state per
connection). The host monitor is replaced by a plain object with the same two fields
(our own interface); libvirt and the store are real.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.controller.ha.agent import HostAgent
from ahvlite.controller.ha.records import STATUS_KEY, StoredVm, key
from ahvlite.controller.ha.service import HaService
from ahvlite.controller.ha.settings import HaSettings
from ahvlite.spec.labels import HA_PRIORITY_LABEL, ROLE_LABEL
from ahvlite.virt import domains, guest
from ahvlite.virt.conn import connection, open_test_node
from ahvlite.virt.xml.domain import Domain

pytestmark = pytest.mark.functional

NODE = """<node>
  <cpu><mhz>2000</mhz><model>i686</model><nodes>1</nodes><sockets>1</sockets>
       <cores>2</cores><threads>1</threads><active>2</active></cpu>
  <memory>{kib}</memory>
  {domains}
</node>"""

DOMAIN = """<domain type='test'>
  <name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>{mib}</memory><vcpu>1</vcpu>
  <os><type>hvm</type></os>
  <metadata><ahv:vm xmlns:ahv="https://ahvlite.io/xmlns/vm/1">{labels}</ahv:vm></metadata>
</domain>"""


def node_file(tmp: Path, host: str, memory_mib: int, vms: list[tuple[str, int, dict]]) -> Path:
    doms = "".join(DOMAIN.format(
        name=n, uuid=uuid.uuid5(uuid.NAMESPACE_URL, n), mib=m,
        labels="".join(f'<ahv:label key="{k}" value="{v}"/>' for k, v in labels.items()))
        for n, m, labels in vms)
    path = tmp / f"{host}.xml"
    path.write_text(NODE.format(kib=memory_mib * 1024, domains=doms))
    return path


@dataclass
class Link:
    conn: Any


@dataclass
class Rec:
    state: str = "connected"


class Monitor:
    def __init__(self, conns: dict[str, Any]) -> None:
        self.links = {h: Link(c) for h, c in conns.items()}
        self.hosts = {h: Rec() for h in conns}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def running(conn) -> set[str]:
    return {n for n, st in guest.list_domains(conn) if st == "running"}


def test_lost_host_vms_restart_by_priority_and_the_returned_host_is_cleaned(tmp_path, leader):
    coord = leader
    a = open_test_node(node_file(tmp_path, "a", 4096, [
        ("web", 256, {HA_PRIORITY_LABEL: "1"}), ("db", 512, {HA_PRIORITY_LABEL: "9"}),
        ("cvm-a", 256, {ROLE_LABEL: "cvm"}), ("huge", 3900, {})]))
    b = open_test_node(node_file(tmp_path, "b", 2048, []))
    mon = Monitor({"a": a, "b": b})
    clock = Clock()
    settings = HaSettings()
    svc = HaService(coord, mon, lambda: settings, clock=clock, retry_s=1.0,
                    open_conn=lambda h: {"a": a, "b": b}[h])
    coord.join("a", json.dumps({"name": "a"}).encode())
    coord.join("b", json.dumps({"name": "b"}).encode())
    svc.round()
    assert {n: StoredVm.from_bytes(v.value).host for n, v in coord.children("ha/vms").items()} \
        == {"web": "a", "db": "a", "cvm-a": "a", "huge": "a"}

    # Host a is lost: its libvirt link and its controller's membership both go.
    mon.links["a"].conn = None
    coord.leave("a")
    clock.now = 1.0
    svc.round()
    status = json.loads(coord.get(STATUS_KEY).value)
    assert status["hosts"]["a"]["verdict"] == "suspect"
    assert running(b) == set()  # nothing moves during the countdown
    clock.now = 1.0 + settings.countdown_s
    svc.round()
    assert running(b) == {"db", "web"}
    status = json.loads(coord.get(STATUS_KEY).value)
    assert status["hosts"]["a"]["verdict"] == "down"
    assert [r["vm"] for r in status["restarts"]] == ["db", "web"]  # priority order
    assert "not placed" in status["failures"]["huge"]  # 3900 MiB fit nowhere
    assert "CVM" in status["failures"]["cvm-a"]
    rec = StoredVm.from_bytes(coord.get(key("db")).value)
    assert rec.host == "b" and rec.restarted_from == ("a",)

    # Retried each round: still unplaced, never started twice.
    clock.now += 5
    svc.round()
    assert running(b) == {"db", "web"}

    # a returns; its agent had powered its copies off. Stale definitions go, and the
    # CVM (never moved) stays defined there.
    for name in ("web", "db", "cvm-a", "huge"):
        a.lookupByName(name).destroy()
    mon.links["a"].conn = a
    coord.join("a", json.dumps({"name": "a"}).encode())
    clock.now += 1
    svc.round()
    left = dict(guest.list_domains(a))
    assert "web" not in left and "db" not in left
    assert left["cvm-a"] == "shutoff" and left["huge"] == "shutoff"
    assert StoredVm.from_bytes(coord.get(key("web")).value).host == "b"


def test_a_start_that_fails_is_retried_not_forced(tmp_path, leader):
    coord = leader
    a = open_test_node(node_file(tmp_path, "a", 4096, [("app", 256, {})]))
    b = open_test_node(node_file(tmp_path, "b", 4096, []))
    mon = Monitor({"a": a, "b": b})
    clock = Clock()
    svc = HaService(coord, mon, HaSettings, clock=clock, retry_s=1.0,
                    open_conn=lambda h: {"a": a, "b": b}[h])
    coord.join("b", b"{}")
    svc.round()
    # Make b refuse the start: a domain of the same name but another UUID exists.
    guest.define(b, guest.simple_domain_xml(guest.SimpleGuest(
        name="app", uuid=str(uuid.uuid4()), domain_type="test", machine="pc")))
    mon.links["a"].conn = None
    clock.now = 100.0
    svc.round()
    clock.now += HaSettings().countdown_s
    svc.round()
    assert "start on b failed" in svc.failures["app"]
    assert running(b) == set()
    assert StoredVm.from_bytes(coord.get(key("app")).value).host == "a"
    # The obstacle goes: the next retry round restarts it.
    domains.undefine_everything(domains.find_domain(b, "app"))
    clock.now += 1.5
    svc.round()
    assert running(b) == {"app"}


def test_hosts_in_maintenance_take_no_restarts_but_their_own_loss_counts(tmp_path, leader):
    coord = leader
    a = open_test_node(node_file(tmp_path, "a", 4096, [("app", 256, {})]))
    b = open_test_node(node_file(tmp_path, "b", 4096, []))
    c = open_test_node(node_file(tmp_path, "c", 4096, [("late", 256, {})]))
    conns = {"a": a, "b": b, "c": c}
    mon = Monitor(conns)
    clock = Clock()
    closed = {"b"}  # b is in maintenance: the cluster state `host maintenance` writes
    svc = HaService(coord, mon, HaSettings, clock=clock, retry_s=1.0,
                    open_conn=conns.__getitem__, closed=lambda: set(closed))
    for h in conns:
        coord.join(h, json.dumps({"name": h}).encode())
    svc.round()
    # a is lost: b has room but is in maintenance, so app goes to c.
    mon.links["a"].conn = None
    coord.leave("a")
    clock.now = 1.0
    svc.round()
    clock.now += HaSettings().countdown_s
    svc.round()
    assert running(b) == set() and running(c) == {"app", "late"}
    # c, entering maintenance, dies with VMs still on it. They are not forgotten: with
    # b still in maintenance they wait, and once b leaves it they restart there.
    closed.add("c")
    mon.links["c"].conn = None
    coord.leave("c")
    svc.round()
    clock.now += HaSettings().countdown_s
    svc.round()
    assert running(b) == set()
    assert json.loads(coord.get(STATUS_KEY).value)["hosts"]["c"]["verdict"] == "down"
    assert "not placed" in svc.failures["app"]
    closed.discard("b")
    clock.now += 1.5
    svc.round()
    assert running(b) == {"app", "late"}


def test_agent_fences_protected_vms_only_when_isolated(tmp_path):
    # test:///default is shared by all connections in a process: the agent's own
    # connection sees what we define here. Other tests rely on its "test" domain.
    with connection("test:///default") as conn:
        before = running(conn)
        for name, labels in (("ha-agent-vm", ""), ("ha-agent-cvm", ROLE_LABEL)):
            xml = guest.simple_domain_xml(guest.SimpleGuest(
                name=name, uuid=str(uuid.uuid4()), domain_type="test", machine="pc"))
            dom = guest.define(conn, xml)
            if labels:
                d = Domain.parse(domains.domain_xml(dom, inactive=True))
                meta = d.ensure_meta()
                meta.labels = {ROLE_LABEL: "cvm"}
                domains.set_vm_metadata(dom, meta)
            guest.start(dom)
        coord = SqliteCoordinator(tmp_path / "c.db")
        clock = Clock()
        agent = HostAgent(coord, "h", "test:///default", HaSettings, clock=clock)
        try:
            clock.now = HaSettings().isolation_timeout_s - 0.1
            assert agent.check() == [] and "ha-agent-vm" in running(conn)
            clock.now = HaSettings().isolation_timeout_s + 0.1
            # Other store members still answer: the store is down for everyone (an
            # election), not this host cut off. Nothing is powered off.
            agent.peers = lambda: ["10.0.0.2:2181"]
            assert agent.check() == [] and agent.check() == []
            assert not agent.isolated and agent.store_down_seen == 1
            assert {"ha-agent-vm", "ha-agent-cvm"} <= running(conn)
            # Nobody answers: isolated.
            agent.peers = list
            fenced = agent.check()
            assert "ha-agent-vm" in fenced and "ha-agent-cvm" not in fenced
            assert "ha-agent-vm" not in running(conn) and "ha-agent-cvm" in running(conn)
            # Contact again; nobody restarted it elsewhere (no record): it stays off.
            agent.last_ok = clock.now
            assert agent.check() == [] and not agent.isolated
        finally:
            coord.close()
            for name in ("ha-agent-vm", "ha-agent-cvm"):
                dom = domains.find_domain(conn, name)
                domains.power_off(dom)
                domains.undefine_everything(dom)
            for name in before - running(conn):
                guest.start(guest.lookup(conn, name))
