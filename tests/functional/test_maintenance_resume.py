"""``maintenance.enter`` as a task on two real controllers over one SQLite store, the
CLI talking to the API of one of them: the leader dies mid-evacuation (one migration
finished, its record lost with the leader), the other controller takes over the task
and finishes it, each VM moving exactly once; an ``exit`` while the ``enter`` runs is
refused and changes nothing; ``exit --restore`` brings everything back.

The hosts are a simulation of our own HostOps (the run's one interface to hosts): the
test driver cannot live-migrate, and here what is under test is the run, its record in
the store and the hand-over between leaders, not libvirt.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ahvlite.cluster.schedulable import MAINTENANCE_KEY, unschedulable_hosts
from ahvlite.cluster.state import ClusterState
from ahvlite.controller.api.settings import ApiSettings, start_api
from ahvlite.controller.clusterview import ClusterView
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.controller.daemon import LEADER_KEY, Controller, Identity
from ahvlite.controller.kinds import registry
from ahvlite.controller.kinds.maintenance import MaintenanceEnter, MaintenanceExit
from ahvlite.controller.tasks import TaskState, TaskStore
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from tests.apicluster import client_env, make_pki
from tests.clirun import ahvlite
from tests.simhosts import SimHosts
from tests.waiting import wait_for

pytestmark = pytest.mark.functional

SPEC = ClusterSpec(name="mres", hosts=[HostSpec(name=h, uri="test:///default")
                                       for h in ("h1", "h2", "h3")])


def sim_kinds(view: ClusterView, sim: SimHosts) -> dict[str, Any]:
    kinds: dict[str, Any] = registry(view)

    class Enter(MaintenanceEnter):
        def ops(self, cluster: Any) -> Any:
            return sim

    class Exit(MaintenanceExit):
        def ops(self, cluster: Any) -> Any:
            return sim

    kinds["maintenance.enter"] = Enter(view)
    kinds["maintenance.exit"] = Exit(view)
    return kinds


@dataclass
class Running:
    name: str
    coord: SqliteCoordinator
    view: ClusterView
    stop: threading.Event
    thread: threading.Thread
    server: Any = None
    url: str | None = None

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(10)
        if self.server is not None:
            self.server.stop()
        self.view.stop()


@contextmanager
def controller(tmp: Path, name: str, sim: SimHosts, *, api: bool = False) -> Iterator[Running]:
    coord = SqliteCoordinator(tmp / "store.db", session_timeout_s=2)
    view = ClusterView(coord)
    view.start()
    kinds = sim_kinds(view, sim)
    server = url = None
    if api:
        pki = tmp / "pki"
        settings = ApiSettings("127.0.0.1", 0, pki / "server.pem", pki / "server-key.pem",
                               pki / "ca.pem", None, tmp / f"uploads-{name}")
        server, url = start_api(settings, coord, name, kinds, view)
    stop = threading.Event()
    ctl = Controller(coord, Identity(name, "here", os.getpid()), kinds, heartbeat_s=0.2,
                     poll_s=0.05, api_url=url)
    t = threading.Thread(target=ctl.run, args=(stop,), daemon=True, name=f"ctl-{name}")
    t.start()
    running = Running(name, coord, view, stop, t, server, url)
    try:
        yield running
    finally:
        if not stop.is_set():
            running.halt()


def leader_name(coord: SqliteCoordinator) -> str | None:
    got = coord.get(LEADER_KEY)
    return json.loads(got.value)["name"] if got else None


def test_enter_resumed_by_a_new_leader_moves_each_vm_once(tmp_path):
    make_pki(tmp_path / "pki")
    setup = SqliteCoordinator(tmp_path / "store.db", session_timeout_s=2)
    state = ClusterState(setup)
    state.write_spec(SPEC, None)
    sim = SimHosts()
    sim.hold["v2"] = threading.Event()
    try:
        with controller(tmp_path, "a", sim) as a:
            assert wait_for(lambda: leader_name(setup) == "a", 20, 0.05)
            with controller(tmp_path, "b", sim, api=True) as b:
                env = client_env(tmp_path / "pki", b.url)
                # Submitted through b (a follower), run by the leader a; without --wait
                # the command returns once the host takes no new VMs.
                r = ahvlite("host", "maintenance", "enter", "h1", "--parallel", "1",
                            "--json", env=env)
                assert r.returncode == 0, r.stderr
                started = json.loads(r.stdout)
                assert started["state"] == "entering" and started["task"]
                assert unschedulable_hosts(state) == {"h1"}
                assert sim.holding.setdefault("v2", threading.Event()).wait(30)
                tasks = TaskStore(setup)
                task, _ = tasks.load(started["task"])
                assert task.owner == "a" and task.message.startswith("migrating v2 to")
                assert task.progress_pct > 10  # v1 is done: progress per VM

                # An exit while the enter runs is refused and changes nothing.
                before = state.get(MAINTENANCE_KEY)
                r = ahvlite("host", "maintenance", "exit", "h1", "--json", env=env)
                assert r.returncode == 4, r.stdout + r.stderr
                assert "`maintenance enter` of h1 is still running" in json.loads(
                    r.stdout)["message"]
                assert state.get(MAINTENANCE_KEY) == before
                moved = [m["vm"] for m in before["hosts"]["h1"]["moved"]]
                assert moved == ["v1"]  # v2 moved in the simulation, not recorded yet

                # The leader dies while v2's migration is in flight; the migration
                # itself finishes (libvirt's job goes on without it).
                a.halt()
                sim.hold["v2"].set()
                assert wait_for(lambda: leader_name(setup) == "b", 20, 0.05)
                end = tasks.wait(started["task"], 60)
                assert end.state == TaskState.SUCCEEDED, end.error
                assert end.attempts == 2 and end.owner == "b"
                assert sorted(m["vm"] for m in end.result["moved"]) == ["v1", "v2", "v3"]
                assert end.result["shut_down"] == ["p1"] and end.result["left"] == ["off"]
                # Each VM moved exactly once, the pinned one was shut down once.
                assert sim.migrations == Counter({"v1": 1, "v2": 1, "v3": 1})
                assert sim.shutdowns == Counter({"p1": 1})
                entry = state.get(MAINTENANCE_KEY)["hosts"]["h1"]
                assert entry["state"] == "in_maintenance"
                assert sorted(m["vm"] for m in entry["moved"]) == ["v1", "v2", "v3"]
                shown = json.loads(ahvlite("host", "maintenance", "show", "--json", env=env).stdout)
                assert shown["hosts"]["h1"]["state"] == "in_maintenance"
                assert shown["hosts"]["h2"] == {"state": "schedulable"}

                r = ahvlite("host", "maintenance", "exit", "h1", "--restore", "--json", env=env)
                assert r.returncode == 0, r.stdout + r.stderr
                back = json.loads(r.stdout)
                assert sorted(x["vm"] for x in back["restored"]) == ["v1", "v2", "v3"]
                assert back["started"] == ["p1"] and back["not_restored"] == []
                assert all(v["host"] == "h1" for v in sim.vms.values())
                assert sim.vms["p1"]["state"] == "running"
                assert sim.migrations == Counter({"v1": 2, "v2": 2, "v3": 2})
                assert unschedulable_hosts(state) == set()
    finally:
        for e in sim.hold.values():
            e.set()
        setup.close()


def test_a_second_enter_of_the_host_is_refused_while_the_first_runs(tmp_path):
    """Two enters of one host: the second is refused while the first has not ended."""
    make_pki(tmp_path / "pki")
    setup = SqliteCoordinator(tmp_path / "store.db", session_timeout_s=2)
    state = ClusterState(setup)
    state.write_spec(SPEC, None)
    sim = SimHosts()
    sim.hold["v1"] = threading.Event()
    try:
        with controller(tmp_path, "a", sim, api=True) as a:
            assert wait_for(lambda: leader_name(setup) == "a", 20, 0.05)
            env = client_env(tmp_path / "pki", a.url)
            first = json.loads(ahvlite("host", "maintenance", "enter", "h1",
                                       "--json", env=env).stdout)
            assert sim.holding.setdefault("v1", threading.Event()).wait(30)
            r = ahvlite("host", "maintenance", "enter", "h1", "--wait", "--json", env=env)
            assert r.returncode == 4, r.stdout + r.stderr
            assert "still running" in json.loads(r.stdout)["message"]
            sim.hold["v1"].set()
            end = TaskStore(setup).wait(first["task"], 60)
            assert end.state == TaskState.SUCCEEDED, end.error
            assert sim.migrations == Counter({"v1": 1, "v2": 1, "v3": 1})
    finally:
        for e in sim.hold.values():
            e.set()
        setup.close()
