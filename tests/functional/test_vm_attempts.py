"""Per-attempt volume names and the leader's guard in the VM layer (test driver).

A create's undo deletes exactly what that attempt made: never a volume of another VM of
the same name, never one of another attempt of the same task; a create whose guard
fails (a deposed leader) stops at its next change on the host and undoes nothing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from ahvlite.cluster import vms
from ahvlite.controller.coord.api import NotLeader
from ahvlite.errors import OperationFailed
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.spec.vm import BootSpec, DiskSpec, VmSpec
from ahvlite.virt import guest, storage
from ahvlite.virt.conn import connection
from tests.stores import sqlite_state
from tests.testdriver import POOL, domain_names, volumes

pytestmark = pytest.mark.functional

CLUSTER = ClusterSpec(name="ta", shared_pool=POOL,
                      hosts=[HostSpec(name="h1", uri="test:///default")])
# The cluster's documents (maintenance, CPU level ...) in a real store of its own.
CLUSTER._state = sqlite_state(Path(tempfile.mkdtemp(prefix="ahvlite-test-")))


@pytest.fixture
def driver():
    # test:///default keeps its state only while a connection is open.
    with connection("test:///default") as conn:
        yield storage.lookup_pool(conn, POOL)


def spec(name: str) -> VmSpec:
    return VmSpec(name=name, memory_mib=128, boot=BootSpec(firmware="uefi"),
                  disks=[DiskSpec(size_mib=16), DiskSpec(size_mib=16, bus="virtio")])


def test_a_failed_create_leaves_another_same_named_vms_volumes(driver, monkeypatch):
    s = spec("tw-twin")
    # What another VM (or attempt) of that name holds: tagged volumes, and the
    # untagged names older ahvlite gave every VM of that name.
    theirs = [*vms.tagged_volumes(s, "0badc0de"),
              "vm-tw-twin-disk0.qcow2", "vm-tw-twin-disk1.qcow2", "vm-tw-twin-VARS.fd"]
    for vol in theirs:
        storage.create_volume(driver, vol, 1)

    def refuse(self):
        raise OperationFailed("start refused for the test")

    monkeypatch.setattr(guest.Guest, "start", refuse)
    before = volumes()
    with pytest.raises(OperationFailed):
        vms.create_vm(CLUSTER, s, start=True, tag="1234abcd")
    assert volumes() == before and set(theirs) <= volumes()
    assert "tw-twin" not in domain_names()
    for vol in theirs:
        storage.delete_volume(driver, vol)


def test_two_attempts_never_touch_each_others_volumes(driver, monkeypatch):
    s = spec("tw-task")
    # Attempt 2 (the new leader) made the VM; attempt 1 (a deposed leader, past its
    # checks before attempt 2 began) then fails its own define of the same spec: its
    # undo must leave attempt 2's volumes, and take its own.
    second = vms.create_vm(CLUSTER, s, tag="22222222")
    theirs = {d["volume"] for d in second.disks}
    assert theirs == {vms.vm_volume("tw-task", n, "22222222") for n in s.disk_names()}

    def refuse(conn, xml):
        raise OperationFailed("define refused for the test")

    monkeypatch.setattr(guest, "define", refuse)
    with vms.connect(CLUSTER) as hosts, pytest.raises(OperationFailed):
        vms.create_on_host(hosts, "h1", s, start=False, report=lambda m: None,
                           tag="11111111")
    assert theirs <= volumes()
    assert not {v for v in volumes() if "11111111" in v}  # its own are gone
    monkeypatch.undo()
    vms.delete_vm(CLUSTER, "tw-task", force=True)
    assert not theirs & volumes()


def test_a_deposed_leader_stops_at_its_next_change_and_undoes_nothing(driver):
    s = spec("tw-deposed")
    calls: list[int] = []

    def guard() -> None:
        calls.append(1)
        if len(calls) == 3:  # two volumes made, then leadership is gone before define
            raise NotLeader("leadership is gone")

    with pytest.raises(NotLeader):
        vms.create_vm(CLUSTER, s, start=True, tag="dddddddd", guard=guard)
    assert len(calls) == 3  # nothing after the refused check, not even an undo
    assert "tw-deposed" not in domain_names()
    left = {v for v in volumes() if v.startswith("vm-tw-deposed-")}
    assert left == {vms.vm_volume("tw-deposed", n, "dddddddd") for n in s.disk_names()}
    for vol in left:  # the next leader's cleanup (kinds.create_once) takes these
        storage.delete_volume(driver, vol)

    # Deposed between define and start: the VM stays defined (the new leader finds it
    # by UUID), and is not started.
    calls.clear()

    def late_guard() -> None:
        calls.append(1)
        if len(calls) == 4:
            raise NotLeader("leadership is gone")

    with pytest.raises(NotLeader):
        vms.create_vm(CLUSTER, s, start=True, tag="eeeeeeee", guard=late_guard)
    info = vms.show_vm(CLUSTER, "tw-deposed")
    assert info.state == "shutoff"
    vms.delete_vm(CLUSTER, "tw-deposed", force=True)
