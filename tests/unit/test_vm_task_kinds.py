"""Param checks of the task kinds `ahvlite vm|image|template ...` submit: bad input is
refused with the field named, before anything runs; good input comes back normalised."""

from __future__ import annotations

import pytest

from ahvlite.cluster.legacy import open_cluster_file
from ahvlite.controller.kinds import registry
from ahvlite.errors import InvalidSpec

SPEC = {"name": "web1", "memory_mib": 128, "disks": [{"size_mib": 16}],
        "nics": [{"network": "br0"}]}


def test_lifecycle_normalises_good_params():
    kind = registry()["vm.lifecycle"]
    assert kind.validate({"action": "start", "name": "web1"}) == {
        "action": "start", "name": "web1", "force": False, "timeout_s": 60.0}
    p = kind.validate({"action": "shutdown", "name": "web1", "timeout_s": 5})
    assert p["timeout_s"] == 5.0
    assert kind.validate({"action": "stop", "name": "a", "force": True})["force"] is True


@pytest.mark.parametrize(("params", "field"), [
    ({"action": "explode", "name": "web1"}, "action"),
    ({"name": "web1"}, "action"),
    ({"action": "start"}, "name"),
    ({"action": "start", "name": "-bad"}, "name"),
    ({"action": "stop", "name": "web1"}, "force"),
    ({"action": "delete", "name": "web1", "force": "yes"}, "force"),
    ({"action": "shutdown", "name": "web1", "timeout_s": -1}, "timeout_s"),
    ({"action": "start", "name": "web1", "cluster": 3}, "cluster"),
])
def test_lifecycle_rejects_bad_params(params, field):
    with pytest.raises(InvalidSpec) as exc:
        registry()["vm.lifecycle"].validate(params)
    assert exc.value.field == field


def test_spec_create_keeps_a_given_uuid_and_is_stable_when_revalidated(kinds):
    kind = kinds["vm.spec.create"]
    uuid = "4b0d1e0e-54c4-4a53-9f0e-3a0a3b1c2d3e"
    once = kind.validate({"spec": {**SPEC, "uuid": uuid}, "host": "h1", "start": True})
    assert once["spec"]["uuid"] == uuid and once["host"] == "h1" and once["start"] is True
    # The leader validates again when it claims the task: nothing may change then.
    assert kind.validate(once) == once


def test_spec_create_without_uuid_leaves_it_to_the_task_id():
    kind = registry()["vm.spec.create"]
    once = kind.validate({"spec": SPEC})
    assert "uuid" not in once["spec"] and kind.validate(once) == once


@pytest.mark.parametrize(("params", "field"), [
    ({}, "spec"),
    ({"spec": "web1"}, "spec"),
    ({"spec": {**SPEC, "memory_mib": 1}}, "memory_mib"),
    ({"spec": {**SPEC, "name": "bad name"}}, "name"),
    ({"spec": {**SPEC, "colour": "red"}}, "colour"),
    ({"spec": SPEC, "host": ""}, "host"),
    ({"spec": SPEC, "start": "yes"}, "start"),
])
def test_spec_create_rejects_bad_params(params, field):
    with pytest.raises(InvalidSpec) as exc:
        registry()["vm.spec.create"].validate(params)
    assert exc.value.field == field


CLUSTER_YAML = """name: c
hosts:
  - name: h1
    uri: test:///default
  - name: h2
    uri: qemu+ssh://root@10.0.0.2/system
"""


@pytest.fixture
def kinds(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER_YAML)
    cluster = open_cluster_file(path)
    return registry(lambda: cluster)


@pytest.mark.parametrize(("kind", "params", "field"), [
    # a URI, a file or anything else a kind does not take is refused, named
    ("vm.create", {"uri": "qemu+ssh://127.0.0.1:1/system?command=/tmp/x", "name": "a"},
     "uri"),
    ("vm.create", {"host": "h1", "uri": "test:///default", "name": "a"}, "uri"),
    ("vm.create", {"host": "h1", "name": "a", "cluster": "/etc/shadow"}, "cluster"),
    ("vm.spec.create", {"spec": SPEC, "cluster": "/tmp/evil.yaml"}, "cluster"),
    ("vm.lifecycle", {"action": "start", "name": "a", "cluster": "/tmp/evil.yaml"},
     "cluster"),
    ("vm.migrate", {"name": "a", "to": "h2", "cluster": "/tmp/evil.yaml"}, "cluster"),
    ("sleep", {"steps": 1, "priority": 5}, "priority"),
    # hosts outside the controller's cluster
    ("vm.create", {"host": "evil", "name": "a"}, "host"),
    ("vm.create", {"name": "a"}, "host"),
    ("vm.spec.create", {"spec": SPEC, "host": "h3"}, "host"),
    ("vm.migrate", {"name": "a", "to": "h9"}, "to"),
    ("vm.migrate", {"name": "a", "to": "qemu+tls://x/system"}, "to"),
])
def test_kinds_take_their_own_params_and_cluster_hosts_only(kinds, kind, params, field):
    with pytest.raises(InvalidSpec) as exc:
        kinds[kind].validate(params)
    assert exc.value.field == field


def test_cluster_hosts_pass(kinds):
    assert kinds["vm.create"].validate({"host": "h2", "name": "a"})["host"] == "h2"
    assert kinds["vm.migrate"].validate({"name": "a", "to": "h1"}) == {"name": "a", "to": "h1"}
    assert kinds["vm.spec.create"].validate({"spec": SPEC, "host": "h1"})["host"] == "h1"


def test_migrate_takes_the_cli_settings_and_a_null_destination():
    kind = registry()["vm.migrate"]
    assert kind.validate({"name": "a", "to": None}) == {"name": "a", "to": None}
    p = kind.validate({"name": "a", "to": None, "max_downtime_ms": 500, "bandwidth_mib_s": 20,
                       "postcopy": True, "max_iterations": 9, "timeout_s": 30})
    assert p == {"name": "a", "to": None, "max_downtime_ms": 500, "bandwidth_mib_s": 20,
                 "postcopy": True, "max_iterations": 9, "timeout_s": 30.0}
    assert kind.validate(p) == p  # the leader validates again when it claims the task
    assert kind.Params(**p).settings().max_iterations == 9


@pytest.mark.parametrize(("kind", "params", "field"), [
    ("vm.migrate", {"name": "a"}, "to"),  # null for "the best host", never left out
    ("vm.migrate", {"name": "a", "to": None, "max_downtime_ms": 0}, "max_downtime_ms"),
    ("vm.migrate", {"name": "a", "to": None, "max_downtime_ms": 60_001}, "max_downtime_ms"),
    ("vm.migrate", {"name": "a", "to": None, "bandwidth_mib_s": 0}, "bandwidth_mib_s"),
    ("vm.migrate", {"name": "a", "to": None, "max_iterations": 0}, "max_iterations"),
    ("vm.migrate", {"name": "a", "to": None, "timeout_s": 0}, "timeout_s"),
    ("vm.migrate", {"name": "a", "to": None, "postcopy": "yes"}, "postcopy"),
    ("vm.migrate", {"name": "a", "to": None, "tls": False}, "tls"),  # always encrypted
    ("vm.update", {"name": "a"}, "labels"),
    ("vm.update", {"name": "a", "ha_priority": 1001}, "ha_priority"),
    ("vm.update", {"name": "a", "ha_priority": "7"}, "ha_priority"),
    ("vm.update", {"name": "a", "labels": {"k": "a\x1bb"}}, "labels.k"),
    ("vm.update", {"name": "a", "labels": {"": "v"}}, "labels (key)"),
    ("vm.update", {"name": "a", "labels": {"ahvlite.io/ha-priority": "1"}, "ha_priority": 2},
     "labels.ahvlite.io/ha-priority"),
    ("vm.disk.add", {"name": "a", "disk": {"size_mib": 16, "bus": "floppy"}}, "disk.bus"),
    ("vm.disk.add", {"name": "a", "disk": {"path": "/etc/shadow"}}, "disk"),
    ("vm.disk.add", {"name": "a", "disk": {"volume": "vm-b-disk0-12345678.qcow2"}}, "disk"),
    ("vm.disk.add", {"name": "a", "disk": {"size_mib": 16, "colour": "red"}}, "colour"),
    ("vm.disk.add", {"name": "a"}, "disk"),
    ("vm.nic.add", {"name": "a", "nic": {"network": "br0", "mac": "01:00:00:00:00:01"}},
     "nic.mac"),
    ("vm.nic.add", {"name": "a", "nic": {"network": "a b"}}, "nic.network"),
    ("vm.nic.remove", {"name": "a", "mac": "nope"}, "mac"),
    ("vm.console.run", {"name": "a", "command": "ls\nreboot"}, "command"),
    ("vm.console.run", {"name": "a", "command": ""}, "command"),
    ("vm.console.run", {"name": "a", "command": "ls", "timeout_s": 0}, "timeout_s"),
    ("image.import", {"upload": "../../etc/shadow", "name": "a"}, "upload"),
    ("image.import", {"upload": "0" * 32, "name": "a b"}, "name"),
    ("image.import", {"upload": "0" * 32, "name": "a", "path": "/tmp/x"}, "path"),
    ("template.create", {"name": "t", "from_vm": "-x"}, "from_vm"),
    ("template.version.add", {"name": "t", "from_vm": "v", "activate": 1}, "activate"),
    ("template.activate", {"name": "t", "version": 0}, "version"),
    ("template.deploy", {"name": "t", "count": 0}, "count"),
    ("template.deploy", {"name": "t", "count": 501}, "count"),
    ("template.deploy", {"name": "t", "prefix": "a/b"}, "prefix"),
    ("template.deploy", {"name": "t", "user_data": "x" * (64 * 1024 + 1)}, "user_data"),
    ("template.deploy", {"name": "t", "user_data": "a\x00b"}, "user_data"),
    ("template.deploy", {"name": "t", "host": "../h1"}, "host"),
])
def test_new_kinds_refuse_bad_params_naming_the_field(kind, params, field):
    with pytest.raises(InvalidSpec) as exc:
        registry()[kind].validate(params)
    assert exc.value.field == field


def test_good_params_come_back_normalised():
    kinds = registry()
    assert kinds["vm.update"].validate({"name": "a", "ha_priority": 3}) == {
        "name": "a", "labels": {}, "ha_priority": 3}
    assert kinds["vm.nic.remove"].validate({"name": "a", "mac": "52:54:00:00:00:01"})[
        "mac"] == "52:54:00:00:00:01"
    assert kinds["template.deploy"].validate({"name": "t"}) == {
        "name": "t", "count": 1, "prefix": None, "version": None, "user_data": None,
        "start": True, "host": None}
    assert kinds["vm.console.run"].resumable is False  # a command never runs twice


def test_deploy_and_migrate_name_only_cluster_hosts(kinds):
    with pytest.raises(InvalidSpec) as exc:
        kinds["template.deploy"].validate({"name": "t", "host": "h9"})
    assert exc.value.field == "host"
