"""`ahvlite host`, `net` and `cluster cpu` as clients of a real controller's API
(tests/apicluster.py): reads served by the controller, host and network changes run as
tasks by the leader, spec changes by compare-and-set, seen by every controller's watch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from ahvlite.cluster import hostfiles
from ahvlite.controller.clusterview import ClusterView
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from tests.apicluster import api_cluster
from tests.waiting import wait_for

pytestmark = pytest.mark.functional

SPEC = ClusterSpec(name="chosts", shared_pool="default-pool",
                   hosts=[HostSpec(name="h1", uri="test:///default")])


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with api_cluster(tmp_path_factory.mktemp("chosts"), SPEC) as c:
        yield c


@pytest.fixture(scope="module")
def empty(tmp_path_factory):
    """A cluster with no host yet (host add / remove)."""
    with api_cluster(tmp_path_factory.mktemp("cempty"), ClusterSpec(name="cempty")) as c:
        yield c


@pytest.fixture
def watcher(request):
    """Another controller's view of the same store (its own store session)."""
    api = request.getfixturevalue(request.param)
    coord = SqliteCoordinator(api.dir / "store.db", session_timeout_s=2)
    view = ClusterView(coord)
    view.start()
    yield api, view
    view.stop()
    coord.close()


def ok_json(r: subprocess.CompletedProcess[str]):
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)


def failed(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    for n in needles:
        assert n in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_host_list_show_and_facts_through_the_api(api):
    listed = ok_json(api.cli("host", "list", "--json"))
    assert [(h["name"], h["state"]) for h in listed] == [("h1", "connected")]
    (h1,) = listed
    assert h1["uri"] == "test:///default" and h1["running_vms"] == 1  # the driver's "test"
    assert h1["hostname"] == socket.gethostname() and h1["error"] is None
    human = api.cli("host", "list")
    assert human.returncode == 0 and "cluster chosts" in human.stdout and "h1" in human.stdout
    shown = ok_json(api.cli("host", "show", "h1", "--json"))
    assert (shown["name"], shown["uri"], shown["state"]) == ("h1", "test:///default",
                                                             "connected")
    assert shown["labels"] == {} and shown["running_vms"] == 1
    failed(api.cli("host", "show", "nosuch"), 3, "nosuch")
    failed(api.cli("host", "show", "bad/name"), 2, "host='bad/name'")
    (facts,) = ok_json(api.cli("host", "facts", "h1", "--json"))
    assert facts["name"] == "h1" and facts["hostname"] == socket.gethostname()
    assert [p["name"] for p in facts["pools"]] == ["default-pool"]
    assert facts["remote"] is None and facts["remote_error"] is None  # no ssh section
    every = ok_json(api.cli("host", "facts", "--serial", "--json"))
    assert [f["name"] for f in every] == ["h1"] and every[0]["pools"] == facts["pools"]
    human = api.cli("host", "facts")
    assert human.returncode == 0 and "h1 (" in human.stdout and "1 host(s) in" in human.stderr


@pytest.mark.parametrize("watcher", ["empty"], indirect=True)
def test_host_add_and_remove_run_as_tasks_and_reach_every_controller(watcher):
    api, view = watcher
    added = ok_json(api.cli("host", "add", "h1", "--uri", "test:///default", "--label",
                            "rack=r1", "--json"))
    assert (added["name"], added["uri"], added["labels"]) == ("h1", "test:///default",
                                                              {"rack": "r1"})
    assert added["cpu_level"]["action"] == "none"  # no level stored
    stored = api.state.spec()
    assert [(h.name, h.labels) for h in stored.hosts] == [("h1", {"rack": "r1"})]
    # Another controller's watch sees the new host without a restart.
    assert wait_for(lambda: [h.name for h in view().hosts] == ["h1"], 10, 0.05)
    version = api.state.spec_version()
    failed(api.cli("host", "add", "h1", "--uri", "test:///default"), 4, "already in cluster")
    failed(api.cli("host", "add", "h2", "--uri", "test:///default"), 4, "is already host 'h1'")
    # The driver's "test" VM runs on h1: removing it is refused and changes nothing.
    failed(api.cli("host", "remove", "h1"), 4, "1 VMs run on h1: test")
    assert api.state.spec_version() == version
    out = api.cli("host", "remove", "h1", "--force")
    assert out.returncode == 0 and "removed h1 from cluster cempty" in out.stdout, out.stderr
    assert api.state.spec().hosts == []
    assert wait_for(lambda: view().hosts == [], 10, 0.05)
    failed(api.cli("host", "remove", "h1"), 3, "'h1'")
    task_id = api.cli("host", "add", "h1", "--uri", "test:///default", "--no-wait").stdout
    assert task_id.strip() and api.coord.get(f"tasks/{task_id.strip()}") is not None
    assert wait_for(lambda: [h.name for h in api.state.spec().hosts] == ["h1"], 20, 0.1)
    ok_json(api.cli("host", "remove", "h1", "--force", "--json"))


@pytest.mark.parametrize("uri", ["qemu+tcp://127.0.0.1/system", "junk",
                                 "qemu+ssh://127.0.0.1/system?command=/bin/true"])
def test_host_add_refuses_a_uri_before_anything_and_writes_nothing(empty, uri):
    version = empty.state.spec_version()
    failed(empty.cli("host", "add", "h9", "--uri", uri), 2, "--uri")
    assert empty.state.spec_version() == version
    # Sent without the CLI's own check, the controller refuses it the same way.
    from ahvlite.controller.api.client import ApiClient
    from ahvlite.errors import AhvliteError

    with ApiClient.from_env(empty.env) as c, pytest.raises(AhvliteError) as exc:
        c.submit("host.add", {"name": "h9", "uri": uri})
    assert exc.value.exit_code == 2 and "uri=" in exc.value.message
    assert empty.state.spec_version() == version


def test_host_add_names_only_the_controllers_own_files(empty, tmp_path, monkeypatch):
    version = empty.state.spec_version()
    key = tmp_path / "id_ed25519"
    key.write_text("not a key\n")
    r = empty.cli("host", "add", "h9", "--uri", "test:///default", "--ssh", "root@127.0.0.1",
                  "--key", str(key))
    failed(r, 2, "ssh.key=", "/etc/ahvlite")
    failed(empty.cli("host", "add", "h9", "--uri", "test:///default", "--key", "/etc/x"), 2,
           "key='/etc/x'", "only together with ssh")
    # A root this controller names in its own environment (a lab's state directory):
    # the path passes, and the leader wants the file to be there.
    monkeypatch.setenv(hostfiles.ROOTS_ENV, str(tmp_path))
    r = empty.cli("host", "add", "h9", "--uri", "test:///default", "--ssh", "root@127.0.0.1",
                  "--key", str(tmp_path / "missing"))
    failed(r, 2, "ssh.key=", "a readable file on the controllers")
    assert empty.state.spec_version() == version and empty.state.spec().hosts == []


@pytest.mark.parametrize("watcher", ["api"], indirect=True)
def test_net_create_and_delete_by_compare_and_set(watcher):
    api, view = watcher
    net = ok_json(api.cli("net", "create", "blue", "--vlan", "10", "--json"))
    assert net == {"name": "blue", "vlan": 10, "bridge": "br0"}
    failed(api.cli("net", "create", "blue", "--vlan", "10"), 4, "'blue' already exists")
    failed(api.cli("net", "create", "vx", "--vlan", "5000"), 2, "vlan")
    failed(api.cli("net", "delete", "nosuch"), 3, "no network named 'nosuch'")
    # Two admins at once: both networks land.
    procs = [subprocess.Popen([sys.executable, "-m", "ahvlite.cli.main", "net", "create", n,
                               "--vlan", str(v), "--json"], env=api.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for n, v in (("red", 20), ("green", 30))]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    nets = {n.name: n.vlan for n in api.state.spec().network.networks}
    assert nets == {"blue": 10, "red": 20, "green": 30}
    assert wait_for(lambda: {n.name for n in view().network.networks} == set(nets), 10, 0.05)
    deleted = ok_json(api.cli("net", "delete", "red", "--json"))
    assert deleted == {"deleted": "red"}
    assert {n.name for n in api.state.spec().network.networks} == {"blue", "green"}
    assert wait_for(lambda: {n.name for n in view().network.networks} == {"blue", "green"},
                    10, 0.05)


def test_net_commands_that_reach_hosts_say_what_is_missing(api):
    version = api.state.spec_version()
    for argv in (["net", "show"], ["net", "show", "h1"], ["net", "apply", "--dry-run"],
                 ["net", "apply"], ["net", "bond", "set", "h1", "--mode", "balance-slb"],
                 ["net", "bond", "set", "h1", "--mode", "balance-slb", "--dry-run"]):
        failed(api.cli(*argv), 3, "host h1 has no ovsdb remote in the cluster")
    failed(api.cli("net", "bond", "set", "h1", "--mode", "bogus"), 2, "mode")
    failed(api.cli("net", "bond", "set", "h9", "--mode", "balance-slb"), 2, "h9")
    failed(api.cli("net", "apply", "--host", "h9"), 2, "h9")
    assert api.state.spec_version() == version  # nothing recorded


def test_cluster_cpu_through_the_api(api):
    # libvirt's test driver has no domain capabilities: the controller's error comes back.
    r = api.cli("cluster", "cpu", "show")
    assert r.returncode != 0 and "virConnectGetDomainCapabilities" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    failed(api.cli("cluster", "cpu", "apply"), 7, "virConnectGetDomainCapabilities")
    failed(api.cli("cluster", "cpu", "set", "Nosuch-CPU"), 2, "Nosuch-CPU")
    failed(api.cli("cluster", "cpu", "set", "bad model"), 2, "model")
    assert api.state.get("cpu") == {}  # nothing stored


def test_host_provision_builds_its_inventory_from_the_api(api, tmp_path, monkeypatch):
    from ahvlite.cli import provision as prov
    from ahvlite.cluster import provision
    from ahvlite.errors import InvalidSpec

    r = api.cli("host", "provision", "h1", "--check", "--json")
    assert r.returncode == 2, r.stderr
    assert "hosts[h1].ssh" in json.loads(r.stdout)["message"]
    failed(api.cli("host", "provision", "h7", "--check"), 3, "'h7'")
    for k, v in api.env.items():
        monkeypatch.setenv(k, v)
    spec = prov.cluster_source(None)
    assert spec.model_dump(mode="json", exclude_none=True) == json.loads(
        api.coord.get("cluster/spec").value)
    with prov.cluster_file_for(spec, None) as path:
        assert path.read_text() == spec.dump_yaml()  # what the play's network module reads
        with pytest.raises(InvalidSpec, match=r"hosts\[h1\]\.ssh"):
            prov.provision_inputs(["h1"], spec=spec, cluster_file=path, pki_dir=tmp_path,
                                  check=True)
        with_ssh = ClusterSpec.model_validate({**spec.model_dump(), "hosts": [
            {"name": "h1", "uri": "qemu+tls://10.0.0.11/system",
             "ssh": {"host": "10.0.0.11", "key": hostfiles.SSH_KEY}}],
            "shared_pool": "shared",  # provisioning refuses a cluster without shared storage
            "pool": {"kind": "netfs", "server": "10.0.0.5", "export": "/srv/ahvlite"}})
        inv, extra = prov.provision_inputs(["h1"], spec=with_ssh, cluster_file=path,
                                           pki_dir=tmp_path / "pki", check=True)
    assert not path.exists()  # the run's copy is gone with the run
    group = inv["all"]["children"][provision.GROUP]
    assert group["hosts"]["h1"]["ansible_host"] == "10.0.0.11"
    assert group["vars"]["ahvlite_cluster_file"] == str(path)
    assert group["vars"]["ahvlite_pki_dir"] == str(tmp_path / "pki")
    assert not (tmp_path / "pki").exists()  # check mode writes no secret
    assert len(extra[provision.ZK_SECRET_VAR]) >= provision.ZK_SECRET_MIN_CHARS
