"""Controllers and a ZooKeeper ensemble inside a 3-host lab (`lab up --controllers`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import uuid
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from ahvlite.controller.daemon import LEADER_KEY
from ahvlite.controller.kinds import registry
from ahvlite.controller.tasks import TaskState, TaskStore
from ahvlite.lab import lab, processes
from ahvlite.lab.services import lab_store_env, lab_zk_members, open_lab_store
from ahvlite.spec.lab import LabSpec
from ahvlite.virt import guest
from ahvlite.virt.conn import connection
from tests.clirun import ahv
from tests.lab.conftest import assert_gone
from tests.procs import assert_on_no_command_line
from tests.waiting import wait_for

NAME = "tctl"
SUBNET = "10.213.63.0/26"


@pytest.fixture(scope="module")
def ctl_lab():
    status = lab.up(LabSpec(name=NAME, hosts=3, subnet=SUBNET, zk=True, controllers=True))
    store = lab_store_env(lab.layout_of(NAME))
    coord = open_lab_store(lab.layout_of(NAME))
    try:
        yield status, store, coord
    finally:
        coord.close()
        pids = list(lab.state_of(NAME).processes)
        lab.down(NAME)
        assert_gone(NAME, pids)
        assert not any(processes.is_alive(p) for p in pids if p.role in ("zookeeper",
                                                                          "controller"))


def daemon_pid(supervisor_pid: int) -> int:
    """The daemon a lab supervisor (ahvlite.lab.supervise) runs: its only child."""
    children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text()
    (pid,) = children.split()
    return int(pid)


def acting(coord):
    rec = coord.get(LEADER_KEY)
    return json.loads(rec.value) if rec else None


def test_one_leader_monitors_every_host(ctl_lab):
    status, _url, coord = ctl_lab
    first = wait_for(lambda: acting(coord), 30)
    st = json.loads(ahv(NAME, "controller", "status", "--json").stdout)
    assert st["leader"]["name"] == first["name"] and len(st["members"]) == 3
    daemons = {h["name"]: h["daemons"] for h in status["hosts"]}
    assert st["leader"]["pid"] == daemon_pid(daemons[first["name"]]["controller"]["pid"])
    assert all("zookeeper" in d and "controller" in d for d in daemons.values())
    # Each host's controller publishes its own host's stats (its local libvirtd): one
    # record per host, read through the API.
    stats = wait_for(lambda: (s := json.loads(ahv(NAME, "stats", "--json").stdout))
                     and len(s) == 3 and s, 30)
    assert sorted(r["host"] for r in stats) == ["h1", "h2", "h3"]
    assert all(r["memory_total_mib"] and r["cpus"] > 0 for r in stats)


def test_vm_create_and_delete_go_through_tasks(ctl_lab):
    _, _env, coord = ctl_lab
    wait_for(lambda: acting(coord), 30)
    vm = f"viatask-{uuid.uuid4().hex[:6]}"

    def listed() -> list[str]:
        return [v["name"] for v in json.loads(ahv(NAME, "vm", "list", "--json").stdout)]

    def tasks_of(kind: str) -> set[str]:
        return {t.id for t, _ in TaskStore(coord).all() if t.kind == kind}

    before = tasks_of("vm.spec.create")
    try:
        made = ahv(NAME, "vm", "create", vm, "--memory-mib", "128", "--disk", "16M", "--nic",
                   "br0", "--host", "h1", "--json")
        assert made.returncode == 0, made.stderr + made.stdout
        assert json.loads(made.stdout)["host"] == "h1"
        (task_id,) = tasks_of("vm.spec.create") - before
        assert store_task(coord, task_id).params["spec"]["name"] == vm
        assert listed().count(vm) == 1
        gone = ahv(NAME, "vm", "delete", vm, "--json")
        assert gone.returncode == 0, gone.stderr + gone.stdout
        assert json.loads(gone.stdout)["host"] == "h1"
        assert vm not in listed()
    finally:
        if vm in listed():
            ahv(NAME, "vm", "delete", vm, "--force")


def store_task(coord, task_id):
    return TaskStore(coord).load(task_id)[0]


def test_sigkill_leader_mid_vm_create_on_a_lab_host(ctl_lab):
    status, _url, coord = ctl_lab
    first = wait_for(lambda: acting(coord), 30)
    target = next(h for h in status["hosts"] if h["name"] != first["name"])
    vm = f"once-{uuid.uuid4().hex[:6]}"
    store = TaskStore(coord)
    task = store.submit("vm.create", {"host": target["name"], "name": vm,
                                      "domain_type": status["domain_type"], "hold_s": 2.0},
                        registry())
    assert wait_for(lambda: "define" in store.load(task.id)[0].steps_done, 20)
    supervisor = next(h["daemons"]["controller"]["pid"] for h in status["hosts"]
                      if h["name"] == first["name"])
    leader_pid = daemon_pid(supervisor)
    os.kill(supervisor, signal.SIGKILL)  # no restart: the next leader is another host's
    os.kill(leader_pid, signal.SIGKILL)
    end = store.wait(task.id, 40)
    assert end.state == TaskState.SUCCEEDED and end.attempts == 2, end.error
    new = acting(coord)
    assert new["name"] != first["name"] and new["token"] > first["token"]
    with connection(target["libvirt_uri"]) as conn:
        assert [n for n, _ in guest.list_domains(conn)].count(vm) == 1
        guest.destroy_and_undefine(conn, vm)
    waited = ahv(NAME, "task", "wait", task.id, "--json")
    assert waited.returncode == 0 and json.loads(waited.stdout)["state"] == "succeeded"


def test_the_store_is_tls_only_and_its_secret_on_no_command_line(ctl_lab):
    _, _env, coord = ctl_lab
    wait_for(lambda: acting(coord), 30)
    layout = lab.layout_of(NAME)
    secret = layout.store_secret_file.read_text().strip().partition(":")[2]
    assert len(secret) >= 24
    assert assert_on_no_command_line(secret) > 20
    # Nor in any environment file: they name the secret's file.
    assert secret not in (layout.root / "controller.env").read_text()
    for host in layout.hosts:
        assert secret not in (host.etc_ahvlite / "controller.env").read_text()
        assert (host.etc_ahvlite / "store.secret").stat().st_mode & 0o077 == 0
    # The controllers and agents run on it (they took it from the file; the test above
    # killed one controller for good) ...
    assert len(coord.members()) >= 2
    assert wait_for(lambda: set(coord.children("agents")) == {"h1", "h2", "h3"}, 30)
    # ... over TLS: nothing listens in clear, and a plaintext client gets nowhere.
    for m in lab_zk_members(layout):
        with pytest.raises(OSError):
            socket.create_connection((m.address, 2181), timeout=2).close()
        plain = KazooClient(m.client, timeout=2)
        with pytest.raises(KazooTimeoutError):
            plain.start(timeout=3)
        plain.stop()
        plain.close()
    # The agents' election probe reads every member's mode over TLS.
    assert [s.state for s in coord.ensemble(timeout_s=2.0)] == ["serving"] * 3
