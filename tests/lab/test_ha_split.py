"""HA on a 4-host lab with ZooKeeper on h1-h3: split {h3, h4} from {h1, h2}.

The minority keeps one ZooKeeper member (h3's), whose client port still accepts
connections though it has no quorum: the split that ran VMs twice under the old TCP
rule. Every host's running domains are polled throughout over each host's local
libvirt socket (which a partition does not cut); no VM may ever run on two hosts, and
each minority VM must be seen off on its old host before it is seen running on the
majority side. Five rounds.
"""

from __future__ import annotations

import json
import time

import pytest

from ahvlite.controller.daemon import LEADER_KEY
from ahvlite.lab import faults, guests, lab
from ahvlite.lab.drills import running_on
from ahvlite.lab.layout import LabLayout
from ahvlite.lab.services import lab_zk_members, member_mode, open_lab_store
from ahvlite.spec.lab import LabSpec
from ahvlite.virt import guest
from ahvlite.virt.conn import local_socket_connection
from tests.clirun import ahv
from tests.lab.conftest import down_keeping_logs
from tests.lab.placements import Placements, recorded_on
from tests.waiting import wait_for

NAME = "tsplit"
SUBNET = "10.213.235.0/26"
MINORITY = ("h3", "h4")
ROUNDS = 5


@pytest.fixture(scope="module")
def split_lab(tmp_path_factory):
    lab.up(LabSpec(name=NAME, hosts=4, subnet=SUBNET, zk=True, controllers=True))
    layout = lab.layout_of(NAME)
    coord = open_lab_store(layout)
    try:
        assert wait_for(lambda: coord.get(LEADER_KEY), 60, 0.2)
        yield layout, coord
    finally:
        coord.close()
        # What HA decided and when: lab down removes the logs.
        down_keeping_logs(NAME, tmp_path_factory.mktemp("tsplit-logs"),
                          ("controller.log", "agent.log", "watchdog.log", "zookeeper.log"))


def leader(coord) -> str:
    return json.loads(coord.get(LEADER_KEY).value)["name"]


def whole(layout: LabLayout, coord) -> bool:
    if not all(member_mode(m) for m in lab_zk_members(layout)):
        return False
    agents = coord.children("agents")
    return len(coord.members()) == 4 and len(agents) == 4


def lead_on_majority(layout: LabLayout, coord) -> None:
    """Make sure the controllers' leader is on the majority side (h1 or h2)."""
    for _ in range(4):
        if leader(coord) not in MINORITY:
            return
        lead = leader(coord)
        lab.stop_daemon(NAME, lead, "controller")  # SIGTERM: it resigns at once
        assert wait_for(lambda lead=lead: coord.get(LEADER_KEY) and leader(coord) != lead,
                        30, 0.2)
        lab.start_daemon(NAME, lead, "controller")
        assert wait_for(lambda: whole(layout, coord), 60, 0.5)
    assert leader(coord) not in MINORITY


def remove(layout: LabLayout, vm: str) -> None:
    for h in layout.hosts:
        with local_socket_connection(h.libvirt_sock) as conn:
            guest.destroy_and_undefine(conn, vm)


def test_a_host_added_to_the_running_cluster_is_protected_within_10_s(split_lab):
    """`host add` reaches the running leader through the store's watch: no restart of
    any controller, and the VMs the new host already runs are protected at once."""
    layout, coord = split_lab
    assert wait_for(lambda: whole(layout, coord), 90, 0.5)
    spec = json.loads(ahv(NAME, "cluster", "export", "--json").stdout)
    h4 = next(h for h in spec["hosts"] if h["name"] == "h4")
    gone = ahv(NAME, "host", "remove", "h4", "--json")
    assert gone.returncode == 0, gone.stderr + gone.stdout
    controllers = {p.pid for p in lab.state_of(NAME).processes if p.role == "controller"}
    guests.boot_from_disk(layout, lab.state_of(NAME), layout.host("h4"), "joiner",
                          str(layout.guest_addresses[3]))
    try:
        time.sleep(3)
        assert recorded_on(coord, "joiner") is None  # h4 is no host of the cluster
        argv = ["host", "add", "h4", "--uri", h4["uri"], "--ssh", f"root@{h4['ssh']['host']}",
                "--key", h4["ssh"]["key"], "--known-hosts", h4["ssh"]["known_hosts"]]
        for k, v in h4.get("labels", {}).items():
            argv += ["--label", f"{k}={v}"]
        added = ahv(NAME, *argv, "--json")
        assert added.returncode == 0, added.stderr + added.stdout
        t0 = time.monotonic()
        assert wait_for(lambda: recorded_on(coord, "joiner") == "h4", 10, 0.1), \
            "the VM of the added host was not protected within 10 s"
        print(f"host add -> its VM protected after {time.monotonic() - t0:.1f} s")
        shown = json.loads(ahv(NAME, "ha", "show", "--json").stdout)
        assert {v["name"]: v for v in shown["vms"]}["joiner"]["protected"]
        assert {p.pid for p in lab.state_of(NAME).processes
                if p.role == "controller"} == controllers  # nothing restarted
    finally:
        out = ahv(NAME, "vm", "delete", "joiner", "--force", "--json")
        if out.returncode != 0:  # not protected (the test failed): remove it directly
            remove(layout, "joiner")


def test_a_split_with_store_members_on_both_sides_never_runs_a_vm_twice(split_lab):
    layout, coord = split_lab
    state = lab.state_of(NAME)
    restart_s: list[float] = []
    for rnd in range(ROUNDS):
        assert wait_for(lambda: whole(layout, coord), 90, 0.5), "cluster not whole"
        lead_on_majority(layout, coord)
        vms = {f"s{rnd}a": "h3", f"s{rnd}b": "h4"}
        for i, (vm, host) in enumerate(vms.items()):
            guests.boot_from_disk(layout, state, layout.host(host), vm,
                                  str(layout.guest_addresses[i]))  # removed each round
        assert wait_for(lambda vms=vms: all(recorded_on(coord, vm) == h
                                            for vm, h in vms.items()), 60, 0.2)
        with Placements(layout, interval_s=0.1) as tl:
            t0 = time.monotonic()
            faults.partition(NAME, *MINORITY)
            try:
                moved = wait_for(lambda vms=vms: all(
                    any(vm in running_on(layout, h) for h in ("h1", "h2")) for vm in vms),
                    90, 0.2)
                assert moved, f"round {rnd}: not restarted on h1/h2: {tl.seen[-1]}"
                restart_s.append(time.monotonic() - t0)
                time.sleep(2)  # keep watching: nothing may start again on the minority
            finally:
                faults.heal(NAME)
            # After the heal the minority's copies stay off and their definitions go.
            assert wait_for(lambda vms=vms: all(vm not in running_on(layout, h)
                                                for vm, h in vms.items()), 10, 0.2)
            time.sleep(3)
        assert tl.twins() == [], f"round {rnd}: {tl.twins()[:3]}"
        for vm, home in vms.items():
            off, up = tl.last_on(vm, home), tl.first_elsewhere(vm, (home,))
            assert off is not None and up is not None and off < up, (rnd, vm, off, up)
        for vm in vms:
            remove(layout, vm)
    print(f"split -> minority VMs running on the majority: "
          f"{', '.join(f'{s:.1f}' for s in restart_s)} s")
