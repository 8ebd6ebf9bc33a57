"""The iSCSI path on a 3-host lab (real tgtd on every host, the redirector, QEMU's own
iSCSI initiator, TCG guests of 128 MiB), with ZooKeeper and controllers for HA.

A guest on h1 writes a checksum pattern all the time. Its target dies: its disk
sessions move to another host's target, no write fails, and every block read back
afterwards is what was written; the target comes back: within a few health checks the
sessions are home again, as `storage show` and the target's own session list say.
Live migration moves the sessions with the VM while it writes; after a host loses
power, HA restarts its VM elsewhere and its disks are served from there.
"""

from __future__ import annotations

import json
import time

import pytest

from ahvlite.cluster import vms
from ahvlite.cluster.migrate import migrate_vm
from ahvlite.cluster.state import ClusterState
from ahvlite.controller.daemon import LEADER_KEY
from ahvlite.lab import drills, guests, iodrill, iscsi, lab
from ahvlite.lab.services import lab_zk_members, member_mode, open_lab_store
from ahvlite.spec.lab import LabSpec
from ahvlite.spec.vm import DiskSpec
from ahvlite.storage.tgt import parse_show
from tests.clirun import ahv
from tests.lab.conftest import down_keeping_logs, in_host
from tests.waiting import wait_for

NAME = "tiscsi"
SUBNET = "10.213.239.0/26"
BLOCKS = 128  # data blocks of 4 KiB the writer cycles through


@pytest.fixture(scope="module")
def ilab(tmp_path_factory):
    status = lab.up(LabSpec(name=NAME, hosts=3, subnet=SUBNET, zk=True, controllers=True,
                            storage="iscsi"))
    layout = lab.layout_of(NAME)
    coord = None
    try:
        coord = open_lab_store(layout)
        # The cluster as the controllers have it (spec and documents from the store), for
        # the calls this test makes into the cluster layer directly.
        cluster = ClusterState(coord).spec()
        assert cluster.storage == "iscsi"
        imported = ahv(NAME, "image", "import", status["guest"]["disk"], "guest", timeout_s=600)
        assert imported.returncode == 0, imported.stdout + imported.stderr
        wait_for(lambda: coord.get(LEADER_KEY), 60, 0.2)
        yield status, layout, cluster, coord
    finally:
        if coord is not None:
            coord.close()
        down_keeping_logs(NAME, tmp_path_factory.mktemp("tiscsi-logs"),
                          ("redirector.log", "storage.log", "controller.log", "agent.log"))


def sessions_shown(status) -> dict[tuple[str, str], str]:
    """(VM, disk) -> the host whose target holds its session, from `storage show`."""
    out = ahv(NAME, "storage", "show", "--json", timeout_s=120)
    assert out.returncode == 0, out.stderr + out.stdout
    return {(s["vm"], s["disk"]): s["on"] for s in json.loads(out.stdout)["sessions"]}


def target_sessions(layout, host: str) -> dict[str, list[str]]:
    """The target's own word: its tgtd's session list (target IQN -> initiators)."""
    out = in_host(layout.host(host), "tgtadm", "--lld", "iscsi", "--op", "show", "--mode",
                  "target")
    return {t.iqn: [s.address for s in t.sessions] for t in parse_show(out.stdout)}


def make_vm(status, layout, cluster, name: str, host: str, index: int) -> vms.VmInfo:
    spec = guests.vm_spec(name, status["guest_addresses"][index])
    spec = spec.model_copy(update={"disks": [*spec.disks, DiskSpec(name="data", size_mib=4)]})
    info = vms.create_vm(cluster, spec, host=host, start=True)
    # Recorded like the lab's own guests, so HA drills ping it where it runs.
    guests.record(layout, lab.state_of(NAME), [guests.LabGuest(
        name=name, host=host, address=status["guest_addresses"][index],
        mac=info.nics[0]["mac"], disk=volumes(info)["disk0"],
        serial_log=guests.serial_log_path(name))])
    log = layout.host(host).state_dir / guests.serial_log_path(name).lstrip("/")
    assert wait_for(lambda: log.exists() and "AHVLITE-GUEST-READY" in log.read_text(
        errors="replace"), 240, 0.5), f"{name} did not boot from its iSCSI disk"
    return info


def writer_state(cluster, vm: str) -> str:
    """What the guest's writer says about itself (for a failure message)."""
    _, out = vms.console_run(cluster, vm, "cat /tmp/io-progress /tmp/io-err; ps | grep -c dd; "
                             "dmesg | tail -5", timeout_s=60)
    return f"the writer wrote too little: {out[-800:]}"


def data_dev(cluster, vm: str) -> str:
    """The guest's name of its data disk (unit 1), resolved at each boot."""
    return iodrill.disk_device(cluster, vm, "data", 1)


def volumes(info: vms.VmInfo) -> dict[str, str]:
    return {d["name"]: d["volume"] for d in info.disks}


def test_failover_and_failback_keep_every_write(ilab):
    status, layout, cluster, _ = ilab
    info = make_vm(status, layout, cluster, "io1", "h1", 0)
    vols = volumes(info)
    assert all(d["iscsi"].endswith(f"{d['volume']}/1") for d in info.disks)
    iqns = {n: d["iscsi"].rsplit("/", 1)[0] for n, d in zip(vols, info.disks, strict=True)}
    assert sessions_shown(status) == {("io1", "disk0"): "h1", ("io1", "data"): "h1"}
    h1_ip = layout.host("h1").ip
    assert all(target_sessions(layout, "h1")[iqn] == [h1_ip] for iqn in iqns.values())

    data = layout.shared_dir / vols["data"]
    dev = data_dev(cluster, "io1")
    with iodrill.Heartbeat(data) as beat:
        iodrill.start_writer(cluster, "io1", dev, BLOCKS)
        # TCG guests on a shared machine can be slow to get going.
        assert wait_for(lambda: len(beat.changes) > 20, 180, 0.2), writer_state(cluster, "io1")
        killed = time.monotonic()
        lab.stop_daemon(NAME, "h1", "storage")
        moved = wait_for(lambda: (w := sessions_shown(status)) and len(set(w.values())) == 1
                         and "h1" not in w.values() and next(iter(w.values())), 30, 0.2)
        assert moved, sessions_shown(status)
        # The remote target's own list has io1's sessions, from h1's address.
        assert all(target_sessions(layout, moved)[iqn] == [h1_ip] for iqn in iqns.values())
        time.sleep(2)
        pause = beat.pause_after(killed, 10)
        assert pause < 10, f"guest I/O stopped for {pause:.1f} s"

        started = time.monotonic()
        started_at = time.time()
        lab.start_daemon(NAME, "h1", "storage")
        home = wait_for(lambda: sessions_shown(status) == {("io1", "disk0"): "h1",
                                                          ("io1", "data"): "h1"}, 60, 0.2)
        assert home, sessions_shown(status)
        # Within a few health checks: tgtd up, its redirector exports the disks again,
        # `rise` (3) checks of 0.5 s pass, the remote target ends the sessions, QEMU logs
        # in again. Timed by h1's redirector (when it sent them home), not by our polls.
        red = json.loads(iscsi.status_path(layout.host("h1")).read_text())
        home_at = max(r["at"] for r in red["redirects"]
                      if r["target"] in iqns.values() and r["to"] == "h1")
        back_s = home_at - started_at
        assert 0 < back_s < 3 * iscsi.LAB_CHECK_INTERVAL_S + 5, back_s
        assert all(target_sessions(layout, "h1")[iqn] == [h1_ip] for iqn in iqns.values())
        assert all(target_sessions(layout, moved).get(iqn) == [] for iqn in iqns.values())
        time.sleep(2)  # still writing, at home
        back_pause = beat.pause_after(started, back_s + 2)
        progress = iodrill.stop_writer(cluster, "io1")
    assert progress.errors == [], progress.errors
    assert progress.seq > 100
    assert iodrill.verify_volume(data, progress, BLOCKS) == []
    same, _ = iodrill.guest_readback(cluster, "io1", dev, progress, BLOCKS)
    assert same, "the guest read back other bytes than it wrote"
    assert iodrill.guest_io_errors(cluster, "io1") == []
    red = json.loads(iscsi.status_path(layout.host("h1")).read_text())
    logins = [r for r in red["redirects"] if r["target"] in iqns.values()]
    assert [r["to"] for r in logins].count(moved) >= 2  # the failover
    assert logins[-1]["to"] == "h1" and logins[-2]["to"] == "h1"  # the failback
    print(f"\nio1: pause {pause * 1000:.0f} ms after h1's target died "
          f"(typical beat {beat.typical_gap(killed - 5, killed) * 1000:.0f} ms), "
          f"home {back_s:.1f} s after it came back (pause then {back_pause * 1000:.0f} ms)")


def test_live_migration_takes_the_sessions_along(ilab):
    status, layout, cluster, _ = ilab
    data = layout.shared_dir / volumes(vms.show_vm(cluster, "io1"))["data"]
    dev = data_dev(cluster, "io1")
    iodrill.start_writer(cluster, "io1", dev, BLOCKS, first_round=1000)
    time.sleep(2)
    migrate_vm(cluster, "io1", to="h2")
    assert vms.show_vm(cluster, "io1").host == "h2"
    assert wait_for(lambda: sessions_shown(status) == {("io1", "disk0"): "h2",
                                                      ("io1", "data"): "h2"}, 30, 0.2), \
        (sessions_shown(status), target_sessions(layout, "h1"), target_sessions(layout, "h2"))
    h2_ip = layout.host("h2").ip
    on_h2 = target_sessions(layout, "h2")
    assert all(on_h2[iqn] == [h2_ip] for iqn in on_h2 if ":vol:vm-io1-" in iqn)
    assert not any(v for iqn, v in target_sessions(layout, "h1").items()
                   if ":vol:vm-io1-" in iqn)
    time.sleep(2)
    progress = iodrill.stop_writer(cluster, "io1", first_round=1000)
    assert progress.errors == []
    assert iodrill.verify_volume(data, progress, BLOCKS) == []
    assert iodrill.guest_readback(cluster, "io1", dev, progress, BLOCKS)[0]


def _zk_leader(layout) -> str | None:
    for h, m in zip(layout.hosts, lab_zk_members(layout), strict=False):
        if member_mode(m) == "leader":
            return h.name
    return None


def test_ha_restarts_a_vm_with_iscsi_disks_elsewhere(ilab):
    status, layout, cluster, coord = ilab
    # One VM for HA to bring back: io1 is powered off (through ahvlite: HA leaves it).
    vms.stop_vm(cluster, "io1", force=True)
    lead = json.loads(coord.get(LEADER_KEY).value)["name"]
    victim = next(h.name for h in layout.hosts if h.name not in (lead, _zk_leader(layout)))
    info = make_vm(status, layout, cluster, "io2", victim, 1)
    data = layout.shared_dir / volumes(info)["data"]
    iodrill.start_writer(cluster, "io2", data_dev(cluster, "io2"), BLOCKS)
    time.sleep(3)
    result = drills.kill_and_watch(NAME, victim, timeout_s=210)
    io2 = next(v for v in result["vms"] if v["name"] == "io2")
    assert io2["to"] not in (None, victim) and io2["answers_s"] is not None, result
    print(f"\nio2: {victim} lost power; running on {io2['to']} after {io2['restarted_s']} s, "
          f"answering after {io2['answers_s']} s")
    # With a host gone, each `storage show` waits out one connect timeout to it (10 s,
    # in parallel for its SSH and libvirt reads): a few of them fit in the wait.
    assert wait_for(lambda: sessions_shown(status).get(("io2", "data")) == io2["to"], 60, 0.5)
    assert sessions_shown(status)[("io2", "disk0")] == io2["to"]
    # The restarted guest reads its disk through the new host's target and writes on.
    iodrill.start_writer(cluster, "io2", data_dev(cluster, "io2"), BLOCKS, first_round=1000)
    time.sleep(2)
    progress = iodrill.stop_writer(cluster, "io2", first_round=1000)
    assert progress.errors == [] and iodrill.verify_volume(data, progress, BLOCKS) == []
    # The redirectors that remain see the dead host's target as failed.
    for h in layout.hosts:
        if h.name == victim:
            continue
        st = json.loads(iscsi.status_path(h).read_text())
        states = {t["host"]: t["state"] for t in st["targets"]}
        assert states[victim] == "failed" and victim not in st["choice"], st
