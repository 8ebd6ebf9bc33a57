"""HA on a 3-host lab with ZooKeeper and a controller (+ host agent) on every host.

Partition a host: its agent powers its VM off before the leader restarts it elsewhere,
and the returned host's stale definition is removed. Kill a host (power loss): its VM
runs on another host and answers ping. Throughout, a watcher reads every host's
running domains (over each host's local libvirt socket, which a partition does not
cut) and records any VM seen running on two hosts at once.
"""

from __future__ import annotations

import json
from functools import partial

import pytest

from ahvlite.controller.daemon import LEADER_KEY
from ahvlite.controller.ha.records import StoredVm, key
from ahvlite.lab import drills, faults, guests, lab, processes
from ahvlite.lab.drills import pings, running_on
from ahvlite.lab.layout import LabLayout
from ahvlite.lab.services import lab_zk_members, member_mode, open_lab_store
from ahvlite.spec.lab import LabSpec
from ahvlite.spec.labels import HA_PRIORITY_LABEL
from ahvlite.virt import guest
from ahvlite.virt.conn import local_socket_connection
from tests.clirun import ahv
from tests.lab.conftest import down_keeping_logs
from tests.lab.placements import Placements, recorded_on
from tests.waiting import wait_for

NAME = "tha"
SUBNET = "10.213.253.0/26"


def defined_on(layout: LabLayout, host: str) -> dict[str, str]:
    sock = layout.host(host).libvirt_sock
    with local_socket_connection(sock, timeout_s=3) as conn:
        return dict(guest.list_domains(conn))


@pytest.fixture(scope="module")
def ha_lab(tmp_path_factory):
    lab.up(LabSpec(name=NAME, hosts=3, subnet=SUBNET, zk=True, controllers=True))
    layout = lab.layout_of(NAME)
    coord = open_lab_store(layout)
    try:
        wait_for(lambda: coord.get(LEADER_KEY), 60, 0.2)
        yield layout, coord
    finally:
        coord.close()
        # The controllers' logs say what HA decided and when; lab down removes them.
        down_keeping_logs(NAME, tmp_path_factory.mktemp("tha-logs"),
                          ("controller.log", "zookeeper.log", "agent.log", "watchdog.log"))


def whole(layout: LabLayout, coord) -> tuple[bool, str]:
    """Every ZooKeeper member serves and every controller is a member: the cluster can
    lose any one host again. (ok, what was seen)"""
    modes = [member_mode(m) for m in lab_zk_members(layout)]
    members = sorted(coord.members())
    return all(modes) and len(members) == len(layout.hosts), f"zk {modes}, members {members}"


def wait_whole(layout: LabLayout, coord, timeout_s: float = 90) -> None:
    seen = wait_for(lambda: (r := whole(layout, coord))[0] and r, timeout_s, 0.5)
    assert seen, f"the cluster did not become whole again: {whole(layout, coord)[1]}"


def leader(coord) -> str:
    return json.loads(coord.get(LEADER_KEY).value)["name"]


def boot(layout: LabLayout, host: str, name: str, index: int) -> guests.LabGuest:
    state = lab.state_of(NAME)
    g = guests.boot_from_disk(layout, state, layout.host(host), name,
                              str(layout.guest_addresses[index]))
    guests.record(layout, state, [g])
    guests.wait_ready(layout, g, timeout_s=240)
    return g


def test_partitioned_host_fences_itself_before_the_restart_elsewhere(ha_lab):
    layout, coord = ha_lab
    lead = leader(coord)
    victim = next(h.name for h in layout.hosts if h.name != lead)
    g = boot(layout, victim, "hapart", 0)
    assert wait_for(lambda: recorded_on(coord, "hapart") == victim, 30, 0.2)
    with Placements(layout) as watch:
        faults.partition(NAME, victim)
        try:
            moved = wait_for(lambda: next((h.name for h in layout.hosts if h.name != victim
                                           and "hapart" in (running_on(layout, h.name)
                                                            or ())), None), 90, 0.2)
            # What the leader thinks (verdicts, failures) makes a failure here readable.
            assert moved, ("the VM was not restarted on another host; ha show: "
                           + cli("ha", "show", "--json").stdout)
            # The isolated host's own agent powered its copy off (its definition stays
            # until the leader sees the host again).
            assert "hapart" not in (running_on(layout, victim) or set())
            assert defined_on(layout, victim).get("hapart") == "shutoff"
            assert wait_for(lambda: pings(layout, moved, g.ip), 120, 0.5)
        finally:
            faults.heal(NAME, victim)
        # Back: its stale definition is removed, not started.
        assert wait_for(lambda: "hapart" not in defined_on(layout, victim), 60, 0.5)
        assert recorded_on(coord, "hapart") == moved
        wait_whole(layout, coord)
    assert watch.polls > 20 and watch.twins() == []


cli = partial(ahv, NAME, timeout_s=120)  # this lab's API


def test_priority_label_and_guarantee_admission(ha_lab):
    _layout, coord = ha_lab
    # The HA priority lands in the VM's metadata, and the leader's record follows it.
    where = recorded_on(coord, "hapart")
    up = cli("vm", "update", "hapart", "--ha-priority", "7", "--json")
    assert up.returncode == 0, up.stderr + up.stdout
    assert json.loads(up.stdout)["labels"] == {HA_PRIORITY_LABEL: "7"}
    assert wait_for(lambda: StoredVm.from_bytes(coord.get(key("hapart")).value).labels
                    .get(HA_PRIORITY_LABEL) == "7", 30, 0.2)
    bad = cli("ha", "set", "--mode", "always")
    assert bad.returncode == 2 and "mode" in bad.stderr
    on = cli("ha", "set", "--mode", "guarantee", "--rf", "3", "--reservation", "segment",
             "--json")
    assert on.returncode == 0 and json.loads(on.stdout)["mode"] == "guarantee", on.stderr
    shown = json.loads(cli("ha", "show", "--json").stdout)
    assert shown["settings"]["mode"] == "guarantee" and shown["reservation"]["ok"]
    protected = {v["name"]: v for v in shown["vms"]}
    assert protected["hapart"]["protected"] and protected["hapart"]["priority"] == 7
    assert protected["hapart"]["host"] == where
    # RF3 on 3 hosts: after losing any two, the third must take all their VMs. A VM
    # nearly a host's size cannot fit beside another VM: refused, memory named.
    total = min(h["total_mib"] for h in shown["hosts"])
    refused = cli("vm", "create", "toobig", "--memory-mib", str(total - 64), "--start",
                  "--json")
    assert refused.returncode == 4, refused.stderr + refused.stdout
    err = json.loads(refused.stdout)
    assert "would break the HA guarantee" in err["message"] and "MiB missing" in err["message"]
    listed = json.loads(cli("vm", "list", "--json").stdout)
    assert "toobig" not in {v["name"] for v in listed}  # nothing half-created
    cli("ha", "set", "--mode", "default")


def zk_leader_host(layout: LabLayout) -> str | None:
    for h, m in zip(layout.hosts, lab_zk_members(layout), strict=False):
        if member_mode(m) == "leader":
            return h.name
    return None


def domain_ids(layout: LabLayout, host: str) -> dict[str, int]:
    """Running domains of ``host`` with their domain IDs (a power cycle changes the ID)."""
    sock = layout.host(host).libvirt_sock
    with local_socket_connection(sock, timeout_s=3) as conn:
        return {d.name(): d.ID() for d in conn.listAllDomains() if d.isActive()}


def test_killed_host_vm_restarts_elsewhere_and_answers(ha_lab):
    layout, coord = ha_lab
    wait_whole(layout, coord)
    # Cut the power of the ZooKeeper leader's host (not the controllers' leader's): the
    # store is then unavailable to everyone for longer than the isolation timeout (the
    # followers notice only after syncLimit, then elect), and the healthy hosts' agents
    # must not take that for isolation and power off their VMs.
    lead, zk_leader = leader(coord), zk_leader_host(layout)
    for _ in range(3):
        if zk_leader != lead:
            break
        # Move ZooKeeper's leadership away: restart that member (it rejoins as a
        # follower). Should the controllers' leadership follow it, try again.
        lab.stop_daemon(NAME, lead, "zookeeper")
        lab.start_daemon(NAME, lead, "zookeeper")
        wait_whole(layout, coord)
        lead, zk_leader = leader(coord), zk_leader_host(layout)
    assert zk_leader is not None and zk_leader != lead, (zk_leader, lead)
    victim = zk_leader
    g = boot(layout, victim, "hakill", 1)
    assert wait_for(lambda: recorded_on(coord, "hakill") == victim, 30, 0.2)
    healthy = [h.name for h in layout.hosts if h.name != victim]
    if not any(domain_ids(layout, h) for h in healthy):
        boot(layout, lead, "habystander", 2)
    bystanders = {h: domain_ids(layout, h) for h in healthy}
    on_victim = set(domain_ids(layout, victim))
    with Placements(layout) as watch:
        # The drill `ahvlite lab kill --watch-ha` runs: power loss, then its own watch.
        result = drills.kill_and_watch(NAME, victim, timeout_s=210)
        assert any(k.startswith("libvirtd:") for k in result["killed"])
        assert not any(processes.is_alive(p) for p in lab.state_of(NAME).processes
                       if p.host == victim)
        assert {vm["name"] for vm in result["vms"]} == on_victim >= {"hakill"}
        for vm in result["vms"]:
            assert vm["to"] not in (None, victim), vm
            assert 0 < vm["restarted_s"] <= vm["answers_s"], vm
            assert wait_for(lambda v=vm: recorded_on(coord, v["name"]) == v["to"], 30, 0.2)
            assert vm["name"] in (running_on(layout, vm["to"]) or set())
        assert result["double_starts"] == [] and result["leader"] == lead
        moved = next(vm["to"] for vm in result["vms"] if vm["name"] == "hakill")
        assert pings(layout, moved, g.ip)
    assert watch.twins() == []
    # No healthy host's agent fenced: every VM that ran there still runs, never
    # power-cycled (same domain ID).
    for h, before in bystanders.items():
        now = domain_ids(layout, h)
        assert {n: now.get(n) for n in before} == before, (h, before, now)
    status = json.loads(coord.get("ha/status").value)
    assert status["hosts"][victim]["verdict"] == "fenced"
    assert any(r["vm"] == "hakill" and r["from"] == victim for r in status["restarts"])
