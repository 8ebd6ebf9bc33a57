"""The CLI as a client of a real controller's API (tests/apicluster.py): reads served
by the controller, writes run as tasks by the leader, errors carried back with their
exit codes."""

from __future__ import annotations

import json

import pytest

from ahvlite.spec.cluster import ClusterSpec, HostSpec
from tests.apicluster import api_cluster

pytestmark = pytest.mark.functional

SPEC = ClusterSpec(name="capi", shared_pool="default-pool",
                   hosts=[HostSpec(name="h1", uri="test:///default")])


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with api_cluster(tmp_path_factory.mktemp("capi"), SPEC) as c:
        yield c


def test_reads_and_a_task_through_the_api(api):
    listed = api.cli("vm", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    vms = {v["name"]: v for v in json.loads(listed.stdout)}
    assert vms["test"]["host"] == "h1"  # the test driver's own domain
    stopped = api.cli("vm", "stop", "test", "--force", "--json")
    if stopped.returncode == 0:  # stop is still in process until it is converted
        pass
    started = api.cli("vm", "start", "test", "--json")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["state"] == "running"
    task_id = api.cli("vm", "start", "test", "--no-wait").stdout.strip()
    assert task_id and api.coord.get(f"tasks/{task_id}") is not None


def test_a_failed_task_keeps_its_exit_code_and_message(api):
    out = api.cli("vm", "start", "no-such-vm")
    assert out.returncode == 3, out.stderr  # NotFound, as in process
    assert "no VM named 'no-such-vm'" in out.stderr and "Traceback" not in out.stderr


def test_without_credentials_the_cli_says_so(api):
    out = api.cli("vm", "list", extra_env={"AHVLITE_CERT": "", "AHVLITE_KEY": ""})
    assert out.returncode in (2, 11) and "Traceback" not in out.stderr, out.stderr
