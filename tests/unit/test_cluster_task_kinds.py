"""The host, network and cluster task kinds: parameters refused with their field named
(on submit, before anything acts), and each kind resumed by a new leader after the old
one acted without recording it: the step finds its own work done, writes nothing twice
and never reports a conflict with itself. Runs over a real SQLite store and libvirt's
test driver; the task context is a small stand-in of our own."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ahvlite.controller.clusterview import ClusterView
from ahvlite.controller.kinds import registry
from ahvlite.errors import Conflict, InvalidSpec, NotFound
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from tests.stores import sqlite_state


class Ctx:
    """What a kind sees of its task: params, attempts, steps recorded once."""

    def __init__(self, params: dict[str, Any], attempts: int = 1) -> None:
        self.params = params
        self.task = SimpleNamespace(id="0000000000001-abcdef01", attempts=attempts)
        self.steps: dict[str, Any] = {}

    def step(self, name: str, fn: Any) -> Any:
        if name not in self.steps:
            self.steps[name] = fn()
        return self.steps[name]

    def progress(self, pct: int, message: str) -> None:
        assert 0 <= pct <= 100 and message

    def check_leader(self) -> int:
        return 1


@pytest.fixture
def kinds(tmp_path):
    state = sqlite_state(tmp_path)
    state.write_spec(ClusterSpec(name="c"), None)
    view = ClusterView(state.store)
    return registry(view), state


def run(kinds, kind: str, params: dict[str, Any], attempts: int = 1) -> dict[str, Any]:
    reg, _ = kinds
    return reg[kind].run(Ctx(reg[kind].validate(params), attempts))


@pytest.mark.parametrize(("kind", "params", "field"), [
    ("host.add", {"name": "h1"}, "uri"),
    ("host.add", {"name": "h1", "uri": "qemu+tcp://10.0.0.1/system"}, "uri"),
    ("host.add", {"name": "bad name", "uri": "test:///default"}, "name"),
    ("host.add", {"name": "h1", "uri": "test:///default", "key": "/etc/ahvlite/ssh/k"}, "key"),
    ("host.add", {"name": "h1", "uri": "test:///default", "ssh": "a b"}, "ssh"),
    ("host.add", {"name": "h1", "uri": "test:///default", "ssh": "root@h",
                  "key": "/home/me/.ssh/id"}, "ssh.key"),
    ("host.add", {"name": "h1", "uri": "test:///default", "ovsdb": "tcp:h:6640"}, "ovsdb"),
    ("host.add", {"name": "h1", "uri": "test:///default", "strict": "yes"}, "strict"),
    ("host.add", {"name": "h1", "uri": "test:///default", "colour": "red"}, "colour"),
    ("host.remove", {"name": "h1", "force": 1}, "force"),
    ("net.create", {"name": "blue", "vlan": 0}, "vlan"),
    ("net.create", {"name": "blue", "vlan": "10"}, "vlan"),
    ("net.create", {"name": "blue", "vlan": 10, "bridge": "a bridge"}, "bridge"),
    ("net.apply", {"host": "nosuch"}, "host"),
    ("net.bond.set", {"host": "nosuch", "mode": "balance-slb"}, "host"),
    ("cluster.apply", {"spec": {"name": "c", "hostz": []}}, "hostz"),
    ("cluster.apply", {"spec": {"name": "c"}, "documents": {"tasks/x": {}}}, "documents"),
    ("cluster.apply", {"spec": {"name": "c", "hosts": [
        {"name": "h1", "uri": "qemu+tls://10.0.0.1/system?pkipath=/root"}]}},
     "hosts[h1].uri pkipath"),
    ("cluster.cpu.set", {"model": "../x"}, "model"),
    ("cluster.cpu.apply", {"recompute": "no"}, "recompute"),
    # The one-host kinds (HostParams): the host is checked against the cluster, and
    # their own fields keep their names and bounds.
    ("cvm.start", {"host": "nosuch"}, "host"),
    ("cvm.start", {"host": "bad name"}, "host"),
    ("cvm.start", {}, "host"),
    ("cvm.stop", {"host": "nosuch", "timeout_s": 1}, "host"),
    ("cvm.stop", {"host": "h1", "timeout_s": 0}, "timeout_s"),
    ("cvm.remove", {"host": "h1", "colour": "red"}, "colour"),
    ("cvm.deploy", {"host": "h1", "upload": "../x"}, "upload"),
    ("maintenance.enter", {"host": "nosuch"}, "host"),
    ("maintenance.enter", {"host": "h1", "parallel": 0}, "parallel"),
    ("maintenance.exit", {"host": "h1", "restore": "yes"}, "restore"),
    ("maintenance.exit", {"host": "h1", "newer": 1}, "newer"),
])
def test_bad_params_are_refused_naming_the_field(kinds, kind, params, field):
    reg, state = kinds
    with pytest.raises(InvalidSpec) as exc:
        reg[kind].validate(params)
    assert exc.value.field == field
    assert state.spec_version() == 0


def test_cluster_apply_params_are_stable_when_the_leader_validates_again(kinds):
    reg, _ = kinds
    once = reg["cluster.apply"].validate({"spec": {"name": "c", "hosts": [
        {"name": "h1", "uri": "test:///default"}]}, "documents": {"templates/web": {}}})
    assert once["spec"] == ClusterSpec(name="c", hosts=[HostSpec(
        name="h1", uri="test:///default")]).model_dump(mode="json", exclude_none=True)
    assert reg["cluster.apply"].validate(once) == once
    with pytest.raises(Conflict, match="holds cluster 'c'"):
        reg["cluster.apply"].validate({"spec": {"name": "other"}})


def test_host_add_resumed_after_its_join_finishes_without_a_second_write(kinds):
    _, state = kinds
    params = {"name": "h1", "uri": "test:///default", "labels": {"rack": "r1"}}
    first = run(kinds, "host.add", params)
    assert first["cpu_level"]["action"] == "none" and first["labels"] == {"rack": "r1"}
    version = state.spec_version()
    # A new leader runs the task again, none of its steps recorded.
    again = run(kinds, "host.add", params, attempts=2)
    assert again["name"] == "h1" and state.spec_version() == version
    # A new task asking the same is a conflict; so is another entry under the name.
    with pytest.raises(Conflict, match="already in cluster"):
        run(kinds, "host.add", params)
    with pytest.raises(Conflict, match="already in cluster"):
        kinds[0]["host.add"].validate({**params, "labels": {}})


def test_host_remove_resumed_after_it_forgot_the_host_counts_as_done(kinds):
    _, state = kinds
    run(kinds, "host.add", {"name": "h1", "uri": "test:///default"})
    with pytest.raises(Conflict, match="VMs run on h1: test"):
        run(kinds, "host.remove", {"name": "h1"})
    assert run(kinds, "host.remove", {"name": "h1", "force": True}) == {
        "removed": "h1", "cluster": "c"}
    version = state.spec_version()
    out = run(kinds, "host.remove", {"name": "h1", "force": True}, attempts=2)
    assert out["note"] == "already gone" and state.spec_version() == version
    with pytest.raises(NotFound, match="'h1'"):
        run(kinds, "host.remove", {"name": "h1", "force": True})


def test_net_create_and_delete_resumed_find_their_work_done(kinds):
    _, state = kinds
    run(kinds, "net.create", {"name": "blue", "vlan": 10})
    version = state.spec_version()
    assert run(kinds, "net.create", {"name": "blue", "vlan": 10}, attempts=2) == {
        "name": "blue", "vlan": 10, "bridge": "br0"}
    assert state.spec_version() == version
    with pytest.raises(Conflict):
        run(kinds, "net.create", {"name": "blue", "vlan": 10})
    with pytest.raises(Conflict):  # refused on submit: another network under the name
        kinds[0]["net.create"].validate({"name": "blue", "vlan": 11})
    run(kinds, "net.delete", {"name": "blue"})
    version = state.spec_version()
    run(kinds, "net.delete", {"name": "blue"}, attempts=2)
    assert state.spec_version() == version and state.spec().network.networks == []
    with pytest.raises(NotFound):
        run(kinds, "net.delete", {"name": "blue"})


def test_cluster_apply_resumed_after_its_write_does_not_conflict_with_itself(kinds):
    _, state = kinds
    params = {"spec": {"name": "c", "labels": {"site": "a"}},
              "documents": {"cluster/state/ha": {"mode": "default"}}}
    first = run(kinds, "cluster.apply", params)
    assert first["spec_written"] is True and first["imported"] == ["cluster/state/ha"]
    version = state.spec_version()
    # The old leader wrote but did not record: the new one plans on the newer version ...
    again = run(kinds, "cluster.apply", params, attempts=2)
    assert again["spec_written"] is False and state.spec_version() == version
    # ... and one whose plan was recorded before the write finds the spec as desired.
    reg, _ = kinds
    ctx = Ctx(reg["cluster.apply"].validate(params), attempts=2)
    ctx.steps["plan"] = {"version": version - 1, "diff": first["diff"],
                         "cpu": {"host": "", "action": "none", "missing": [], "level": None}}
    assert reg["cluster.apply"].run(ctx)["spec_written"] is False
    assert state.get("ha") == {"mode": "default"}
