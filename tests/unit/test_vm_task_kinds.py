"""Param checks of the VM task kinds that `ahvlite vm ...` submits with a store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

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


def cli(*argv: str, store: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AHVLITE_CLUSTER",)}
    return subprocess.run([sys.executable, "-m", "ahvlite.cli.main", *argv],
                          env={**env, "AHVLITE_STORE": store}, capture_output=True,
                          text=True, timeout=60)


def test_cli_with_a_store_submits_after_the_same_checks(tmp_path):
    from ahvlite.controller.coord import open_store
    from ahvlite.controller.tasks import TaskStore

    url = f"sqlite:///{tmp_path}/c.db"
    bad = cli("vm", "create", "web1", "--memory-mib", "1", "--json", store=url)
    assert bad.returncode == 2 and "memory_mib" in bad.stdout
    assert cli("vm", "stop", "web1", "--json", store=url).returncode == 2
    made = cli("vm", "create", "web1", "--memory-mib", "128", "--disk", "16M", "--host", "h1",
               "--json", store=url)
    assert made.returncode == 0, made.stderr
    stopped = cli("vm", "stop", "web1", "--force", store=url)
    assert stopped.returncode == 0, stopped.stderr
    ts = TaskStore(open_store(url), time.time)
    try:
        tasks = {t.id: t for t, _ in ts.all()}
    finally:
        ts.coord.close()
    assert len(tasks) == 2
    created = tasks[json.loads(made.stdout)["task"]]
    assert created.kind == "vm.spec.create" and created.params["host"] == "h1"
    assert created.params["spec"]["disks"][0]["size_mib"] == 16
    assert tasks[stopped.stdout.strip()].params == {
        "action": "stop", "name": "web1", "force": True, "timeout_s": 60.0}


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
