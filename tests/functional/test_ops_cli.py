"""HA settings, maintenance, ADS, the CVM, stats and the controller's status from the
CLI as a client of a real controller's API (tests/apicluster.py) over libvirt's test
driver: the same checks, messages and exit codes as when the CLI did the work itself,
and HA guarantee mode refusing ``ha set``, maintenance and ADS moves with the missing
memory named.

Every host of this cluster is the one in-process test driver (each lists every VM).
The host order (h2, h1, h3) makes VMs count on h2 while host reservation keeps h1
(the first by name of equal hosts) free, so moves onto h1 break the guarantee.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

from ahvlite.cluster.adsinput import LAST_RUN_KEY
from ahvlite.cluster.adsrules import add_rule, load_rules
from ahvlite.cluster.maintenance import mark_unschedulable
from ahvlite.cluster.schedulable import MAINTENANCE_KEY, unschedulable_hosts
from ahvlite.controller.ha.config import load_settings, settings_loader
from ahvlite.controller.ha.settings import STATE_KEY as HA_KEY
from ahvlite.controller.ha.settings import HaSettings
from ahvlite.controller.tasks import TaskStore
from ahvlite.sched.model import VmHostAffinity
from ahvlite.spec.cluster import ClusterSpec, HostSpec
from ahvlite.spec.smallguest import SimpleGuest
from ahvlite.virt import designer, guest
from ahvlite.virt.conn import connection
from tests.apicluster import api_cluster
from tests.unit.test_sched_planner import ahv_doc_example
from tests.waiting import wait_for

pytestmark = pytest.mark.functional

SPEC = ClusterSpec(name="ops", shared_pool="default-pool",
                   hosts=[HostSpec(name=h, uri="test:///default") for h in ("h2", "h1", "h3")])


@pytest.fixture(scope="module")
def driver():
    """The test driver, kept (its state lives while a connection is open), with its
    own VM "test" (2 GiB) stopped: the guarantee tests count every running VM."""
    with connection("test:///default") as conn:
        test_vm = guest.find(conn, "test")
        was_running = test_vm is not None and test_vm.is_active()
        if was_running:
            test_vm.destroy()
        try:
            yield conn
        finally:
            dom = guest.find(conn, "g1")
            if dom is not None:
                dom.destroy()
                dom.undefine()
            if was_running:
                guest.find(conn, "test").start()


@pytest.fixture(scope="module")
def api(tmp_path_factory, driver):
    with api_cluster(tmp_path_factory.mktemp("ops"), SPEC) as c:
        yield c


@pytest.fixture
def default_ha(api):
    api.state.put(HA_KEY, HaSettings().to_doc())
    yield
    api.state.put(HA_KEY, HaSettings().to_doc())


def small_vm(conn, name: str = "g1") -> None:
    """A running 64 MiB VM on the test driver (so on every host of this cluster)."""
    if guest.find(conn, name) is None:
        dom = guest.define(conn, designer.simple_domain_xml(SimpleGuest(
            name=name, uuid=str(uuid.uuid4()), domain_type="test", machine="pc",
            memory_mib=64)))
        dom.start()


def error(out: subprocess.CompletedProcess[str]) -> str:
    return json.loads(out.stdout)["message"]


# -- HA settings --------------------------------------------------------------------

def test_set_stores_and_defaults_stay(api, default_ha):
    assert load_settings(api.state) == HaSettings()
    out = api.cli("ha", "set", "--mode", "guarantee", "--rf", "3", "--reservation", "host",
                  "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["mode"], doc["rf"], doc["reservation"]) == ("guarantee", 3, "host")
    assert load_settings(api.state).rf == 3
    # Only what is given changes.
    assert api.cli("ha", "set", "--rf", "2").returncode == 0
    s = load_settings(api.state)
    assert (s.mode, s.rf, s.reservation) == ("guarantee", 2, "host")
    assert api.state.get(HA_KEY)["lease_s"] == s.lease_s  # in the store, not a file


@pytest.mark.parametrize(("args", "needle"), [
    (["--mode", "always"], "mode='always'"),
    (["--rf", "4"], "rf=4"),
    (["--reservation", "pool"], "reservation='pool'"),
    (["--lease", "1"], "lease_s=1.0"),
    (["--watchdog", "0.2"], "watchdog_s=0.2"),
])
def test_bad_settings_are_refused_and_nothing_is_stored(api, default_ha, args, needle):
    before = api.coord.children("tasks")
    out = api.cli("ha", "set", *args)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr + out.stdout
    assert load_settings(api.state) == HaSettings()
    assert api.coord.children("tasks") == before  # refused before anything was submitted


def test_the_leader_refuses_bad_settings_too(api, default_ha):
    task = TaskStore(api.coord).submit("ha.set", {"lease_s": 1})  # no checks
    end = TaskStore(api.coord).wait(task.id, 30)
    assert end.state == "failed" and "lease_s=1" in end.error
    assert load_settings(api.state) == HaSettings()


def test_daemon_loader_keeps_the_last_good_settings(api, default_ha):
    read = settings_loader(api.state, ttl_s=0)
    assert api.cli("ha", "set", "--mode", "guarantee").returncode == 0
    assert read().mode == "guarantee"
    api.coord.put("cluster/state/ha", b"{broken")
    assert read().mode == "guarantee"
    assert settings_loader(None)() == HaSettings()


def test_ha_show_has_settings_reservation_vms_and_the_leaders_view(api, default_ha):
    api.coord.put("ha/status", json.dumps({"hosts": {}, "restarts": [],
                                           "failures": {}}).encode())
    out = api.cli("ha", "show", "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["settings"]["mode"] == "default"
    assert {h["name"] for h in shown["hosts"]} == {"h1", "h2", "h3"}
    assert shown["reservation"]["kind"] == "none"
    assert shown["leader_view"] == {"hosts": {}, "restarts": [], "failures": {}}
    human = api.cli("ha", "show")
    assert human.returncode == 0 and "mode default" in human.stdout, human.stderr


# -- HA guarantee mode: the one admission check ---------------------------------------

def test_guarantee_refuses_what_would_break_it_naming_the_missing_mib(api, driver,
                                                                      default_ha):
    small_vm(driver)
    # ha set: g1 runs on h1, the host reservation would keep free.
    out = api.cli("ha", "set", "--mode", "guarantee", "--reservation", "host")
    assert out.returncode == 4, out.stdout + out.stderr
    assert "MiB missing" in out.stderr and "Traceback" not in out.stderr
    assert load_settings(api.state).mode == "default"  # nothing stored

    # Stored anyway (as if the VM had started after): moves onto h1 are refused.
    api.state.put(HA_KEY, HaSettings(mode="guarantee", reservation="host").to_doc())
    out = api.cli("host", "maintenance", "enter", "h2", "--wait", "--json")
    assert out.returncode == 4, out.stdout + out.stderr
    assert "MiB missing" in error(out) and "g1" in error(out)
    assert unschedulable_hosts(api.state) == set()  # refused before anything moved
    assert guest.find(driver, "g1").is_active()

    # ADS: h2 is hot (as its controller published), h3 in maintenance: the plan moves
    # g1 onto h1, and the run is refused before it migrates anything.
    now = time.time()
    api.coord.put("stats/h2", json.dumps(_record("h2", now, [("g1", 100.0)])).encode())
    api.coord.put("stats/h1", json.dumps(_record("h1", now, [], cpus=4)).encode())
    mark_unschedulable(api.state.spec(), "h3")
    try:
        plan = json.loads(api.cli("ads", "plan", "--json").stdout)
        assert [(m["vm"], m["target"]) for m in plan["moves"]] == [("g1", "h1")]
        out = api.cli("ads", "run", "--json")
        assert out.returncode == 4, out.stdout + out.stderr
        assert "MiB missing" in error(out)
        run = api.state.get(LAST_RUN_KEY)
        assert run["migrations"] == [] and "MiB missing" in run["error"]["message"]
    finally:
        api.state.update(MAINTENANCE_KEY, lambda d: {"hosts": {}})
        for h in ("h1", "h2"):
            api.coord.delete(f"stats/{h}")
        api.state.put(LAST_RUN_KEY, {})


def _record(host: str, at: float, vms: list[tuple[str, float]], cpus: int = 1) -> dict:
    return {"host": host, "at": at, "interval_s": 10.0, "cpus": cpus, "cpu_pct": 50.0,
            "memory_total_mib": 3072.0, "memory_used_mib": 100.0, "memory_pct": 3.3,
            "vms": [{"name": n, "uuid": n, "state": "running", "vcpus": 1, "cpu_pct": c,
                     "memory_mib": 64.0, "memory_max_mib": 64.0, "net_rx_bytes_per_s": 0.0,
                     "net_tx_bytes_per_s": 0.0, "disk_read_bytes_per_s": 0.0,
                     "disk_write_bytes_per_s": 0.0} for n, c in vms]}


# -- maintenance ----------------------------------------------------------------------

@pytest.mark.parametrize(("args", "needle"), [
    (["--parallel", "0"], "--parallel=0"),
    (["--max-downtime-ms", "-5"], "--max-downtime-ms=-5"),
])
def test_enter_checks_options_before_marking_the_host(api, args, needle):
    r = api.cli("host", "maintenance", "enter", "h1", *args)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and needle in out and "Traceback" not in out, out
    assert unschedulable_hosts(api.state) == set()


def test_enter_a_host_a_vm_cannot_leave_then_exit(api, driver, default_ha):
    small_vm(driver)
    # Without --wait: the host takes no new VMs when the command returns.
    r = api.cli("host", "maintenance", "enter", "h3", "--json")
    assert r.returncode == 0, r.stderr
    started = json.loads(r.stdout)
    assert started["state"] == "entering" and started["task"]
    assert "h3" in unschedulable_hosts(api.state)
    # The test driver cannot live-migrate: g1 cannot leave, the task says why (exit 9
    # from --wait), and the host stays unschedulable in state "entering".
    end = TaskStore(api.coord).wait(started["task"], 60)
    assert end.state == "failed" and end.error_kind == "failed", end.error
    shown = json.loads(api.cli("host", "maintenance", "show", "--json").stdout)["hosts"]
    assert shown["h3"]["state"] == "entering" and shown["h1"] == {"state": "schedulable"}
    assert [f["vm"] for f in shown["h3"]["failed"]] == ["g1"]
    again = api.cli("host", "maintenance", "enter", "h3", "--wait")
    assert again.returncode == 9 and "h3 is unschedulable but not empty" in again.stderr
    assert "Traceback" not in again.stderr
    table = api.cli("host", "maintenance", "show")
    assert "entering" in table.stdout and "maintenance in ops" in table.stdout
    r = api.cli("host", "maintenance", "exit", "h3", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout) == {"host": "h3", "state": "schedulable", "started": [],
                                    "restored": [], "not_restored": []}
    assert unschedulable_hosts(api.state) == set()
    missing = api.cli("host", "maintenance", "exit", "h3")
    assert missing.returncode == 3 and "not in maintenance" in missing.stderr
    unknown = api.cli("host", "maintenance", "enter", "h9")
    assert unknown.returncode == 2 and "host='h9'" in unknown.stderr


# -- ADS ------------------------------------------------------------------------------

def test_effectiveness_needs_a_run_and_reads_the_one_recorded(api, driver):
    api.state.put(LAST_RUN_KEY, {})
    missing = api.cli("ads", "effectiveness")
    assert missing.returncode == 3 and "ads run" in missing.stderr
    run = api.cli("ads", "run", "--json", "--sample", "0.2")
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    # The test driver's hosts are idle: no hotspot, nothing migrated, the run recorded.
    assert record["plan"]["status"] == "no-hotspot" and record["migrations"] == []
    eff = api.cli("ads", "effectiveness", "--json", "--sample", "0.2")
    assert eff.returncode == 0, eff.stderr
    hosts = {h["host"] for h in json.loads(eff.stdout)["hosts"]}
    assert hosts == {"h1", "h2", "h3"}
    snap = json.loads(api.cli("ads", "snapshot", "--sample", "0.2").stdout)
    assert {h["name"] for h in snap["hosts"]} == {"h1", "h2", "h3"}


def test_cli_plans_on_a_snapshot_and_refuses_bad_input(api, tmp_path):
    from ahvlite.sched.plan import make_plan

    snap = tmp_path / "snap.json"
    snap.write_text(json.dumps(ahv_doc_example().to_dict()))
    out = api.cli("ads", "plan", "--snapshot", str(snap), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads(json.dumps(make_plan(
        ahv_doc_example()).to_dict()))
    bad = tmp_path / "bad.json"
    raw = ahv_doc_example().to_dict()
    raw["thresholds"]["cpu_pct"] = 140
    bad.write_text(json.dumps(raw))
    out = api.cli("ads", "plan", "--snapshot", str(bad))
    assert out.returncode == 2 and "thresholds.cpu_pct=140" in out.stderr
    assert "Traceback" not in out.stderr
    out = api.cli("ads", "rules", "add", "x", "--kind", "anti", "--vms", "a")
    assert out.returncode == 2 and "--vms" in out.stderr and "Traceback" not in out.stderr
    assert load_rules(api.state).names() == []


def test_cli_refuses_an_unreadable_snapshot_naming_the_option(api, tmp_path):
    binary = tmp_path / "latin1.json"
    binary.write_bytes(b'{"hosts": "\xff\xfe"}')
    for bad in (tmp_path, binary):  # a directory; not UTF-8
        out = api.cli("ads", "plan", "--snapshot", str(bad))
        assert out.returncode == 2, out.stderr
        assert "--snapshot" in out.stderr and "Traceback" not in out.stderr


def test_cli_checks_the_solver_before_reading_anything(api):
    # No API configured at all: a solver check after reaching it never runs.
    out = api.cli("ads", "plan", "--solver", "magic", extra_env={"AHVLITE_API": ""})
    assert out.returncode == 2 and "--solver" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    out = api.cli("ads", "plan", "--solver", "magic")
    assert out.returncode == 2 and "--solver" in out.stderr


def test_rules_are_added_listed_removed_and_stale_hosts_flagged(api):
    out = api.cli("ads", "rules", "add", "db-on-h1", "--vms", "db", "--hosts", "h1,h2",
                  "--json")
    assert out.returncode == 0, out.stderr
    assert [r["name"] for r in json.loads(out.stdout)["host_affinity"]] == ["db-on-h1"]
    assert api.cli("ads", "rules", "add", "web-on-h2", "--vms", "web",
                   "--hosts", "h2").returncode == 0
    dup = api.cli("ads", "rules", "add", "web-on-h2", "--vms", "x", "--hosts", "h1")
    assert dup.returncode == 4 and "exists" in dup.stderr
    gone = api.cli("ads", "rules", "add", "bad", "--vms", "db", "--hosts", "h7", "--json")
    assert gone.returncode == 2 and "h7" in error(gone)
    assert load_rules(api.state).names() == ["db-on-h1", "web-on-h2"]
    # `host remove h1` afterwards: the rule stays, naming a gone host; it is flagged.
    version = api.state.spec_version()
    fewer = SPEC.model_copy(update={"hosts": [h for h in SPEC.hosts if h.name != "h1"]})
    api.state.write_spec(fewer, version)
    try:
        assert wait_for(lambda: json.loads(api.cli("ads", "rules", "list", "--json").stdout)[
            "stale"] == {"db-on-h1": ["h1"]}, 20, 0.2)
        out = api.cli("ads", "rules", "list")
        assert out.returncode == 0 and "hosts gone: h1" in out.stdout, out.stdout
    finally:
        api.state.write_spec(SPEC, api.state.spec_version())
    out = api.cli("ads", "rules", "remove", "web-on-h2", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["host_affinity"][0]["name"] == \
        "db-on-h1"
    missing = api.cli("ads", "rules", "remove", "web-on-h2")
    assert missing.returncode == 3 and "no ADS rule named 'web-on-h2'" in missing.stderr
    api.cli("ads", "rules", "remove", "db-on-h1")
    assert load_rules(api.state).names() == []
    # A rule the cluster layer stored is the same rule to the API.
    add_rule(api.state.spec(), VmHostAffinity("r", ("db",), ("h1",)))
    listed = json.loads(api.cli("ads", "rules", "list", "--json").stdout)
    assert [r["name"] for r in listed["host_affinity"]] == ["r"]
    assert api.cli("ads", "rules", "remove", "r").returncode == 0


# -- CVM ------------------------------------------------------------------------------

def test_cvm_status_plan_deploy_and_remove_through_the_api(api, tmp_path):
    out = api.cli("cvm", "status", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        {"host": h, "name": f"cvm-{h}", "state": "absent", "recorded": False}
        for h in ("h2", "h1", "h3")]
    one = json.loads(api.cli("cvm", "status", "h1", "--json").stdout)
    assert [c["host"] for c in one] == ["h1"]
    # Planning reads the host's sysfs over SSH: a host without an ssh entry is told so.
    plan = api.cli("cvm", "plan", "h1", "--json")
    assert plan.returncode == 2 and "hosts[h1].ssh" in error(plan), plan.stdout
    plan = api.cli("cvm", "plan", "h1", "--controller", "0000:3c:00.0", "--controller",
                   "0000:00:17.0", "--lab-lun", "x", "--json")  # the query carries them
    assert plan.returncode == 2 and "hosts[h1].ssh" in error(plan), plan.stdout
    # Options are checked before the image travels; a missing image is named.
    image = tmp_path / "cvm.img"
    image.write_bytes(b"\0" * (1 << 20))
    staged = api.dir / "uploads"
    bad = api.cli("cvm", "deploy", "h1", "--image", str(image), "--vcpus", "0", "--json")
    assert bad.returncode == 2 and "vcpus" in error(bad)
    assert not staged.exists() or list(staged.iterdir()) == []
    nope = api.cli("cvm", "deploy", "h1", "--image", str(tmp_path / "nope.qcow2"))
    assert nope.returncode == 2 and "image=" in nope.stderr
    lun = api.cli("cvm", "deploy", "h1", "--image", str(image), "--lab-lun", "rel/x",
                  "--json")
    assert lun.returncode == 2 and "lab_luns" in error(lun)
    # Uploaded to the leader, refused there (no SSH to read the host), nothing left:
    # no CVM, no record, and the staged image gone.
    out = api.cli("cvm", "deploy", "h1", "--image", str(image), "--vcpus", "1",
                  "--memory-mib", "128", "--json")
    assert out.returncode == 2 and "hosts[h1].ssh" in error(out), out.stdout + out.stderr
    assert [p.name for p in staged.iterdir()] == []
    assert json.loads(api.cli("cvm", "status", "h1", "--json").stdout)[0]["state"] == \
        "absent"
    for cmd in (("remove", "h1"), ("start", "h1"), ("stop", "h1")):
        r = api.cli("cvm", *cmd)
        assert r.returncode == 3 and "h1 has no CVM" in r.stderr, (cmd, r.stderr)


# -- stats and the controller -----------------------------------------------------------

def test_stats_and_controller_status_through_the_api(api):
    now = time.time()
    api.coord.put("stats/h1", json.dumps(_record("h1", now, [("test", 1.0)])).encode())
    try:
        out = api.cli("stats", "--vm", "test", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)[0]["vms"][0]["name"] == "test"
        missing = api.cli("stats", "--host", "nope")
        assert missing.returncode == 3 and "Traceback" not in missing.stderr
        assert "no stats for host nope" in missing.stderr
        assert "h1" in api.cli("stats").stdout
    finally:
        api.coord.delete("stats/h1")
    st = api.cli("controller", "status", "--json")
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)
    assert status["leader"]["name"] == "ctl" and status["store"].startswith("sqlite://")
    assert [m["name"] for m in status["members"]] == ["ctl"]
    assert "leader ctl" in api.cli("controller", "status").stdout


def test_commands_without_a_client_config_say_so(api, tmp_path):
    env = {"AHVLITE_API": "", "AHVLITE_CERT": "", "AHVLITE_KEY": "", "AHVLITE_CA": "",
           "HOME": str(tmp_path)}
    for argv in (["controller", "status"], ["ha", "show"], ["cvm", "status"]):
        r = api.cli(*argv, extra_env=env)
        assert r.returncode == 3 and "no API endpoints configured" in r.stderr, (argv, r)
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize(("argv", "opt"), [
    (["ha", "show"], "--cluster"), (["host", "maintenance", "show"], "--cluster"),
    (["ads", "rules", "list"], "--cluster"), (["stats"], "--store"),
    (["controller", "status"], "--store"),
])
def test_no_command_here_takes_a_cluster_or_store_option(api, argv, opt):
    r = api.cli(*argv, opt, "x")
    assert r.returncode == 2 and "No such option" in r.stderr, (argv, opt)
