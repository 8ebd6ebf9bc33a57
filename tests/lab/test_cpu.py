"""The cluster CPU level on a 2-host lab (TCG): baseline, apply, a VM that boots with
it and runs on both hosts, a newer CPU reported as incompatible, a refused override."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path

import pytest
from lxml import etree

from ahvlite.cluster import vms
from ahvlite.errors import OperationTimeout
from ahvlite.lab import lab
from ahvlite.lab.layout import OVS_BRIDGE
from ahvlite.spec.cluster import ClusterSpec
from ahvlite.spec.lab import LabSpec
from ahvlite.spec.smallguest import SimpleGuest
from ahvlite.virt import designer, guest
from ahvlite.virt.conn import connection
from ahvlite.virt.designer import HostPolicy
from ahvlite.virt.xml.domain import Domain
from tests.clirun import ahv

from .conftest import in_host

NAME = "tcpu"
SUBNET = "10.213.247.0/26"
# Writes the cluster's `cpu` document by hand, from inside a lab host with its
# controller's own environment file (the store URL and credential): a level as if h1
# were a newer machine, which no command would store.
PUT_LEVEL = """
import json, os, sys
from ahvlite.cluster.state import ClusterState
from ahvlite.controller.coord import open_store
env = dict(l.split("=", 1) for l in open("/etc/ahvlite/controller.env").read().splitlines()
           if "=" in l and not l.startswith("#"))
os.environ.update(env)
coord = open_store(env["AHVLITE_STORE"])
ClusterState(coord).put("cpu", json.loads(sys.argv[1]))
coord.close()
"""


def exported() -> ClusterSpec:
    r = ahv(NAME, "cluster", "export", "--json")
    assert r.returncode == 0, r.stderr
    return ClusterSpec.model_validate_json(r.stdout)


def root_cluster() -> ClusterSpec:
    """The lab's cluster with URIs that reach its hosts from here (instrumentation)."""
    layout = lab.layout_of(NAME)
    spec = exported()
    return spec.model_copy(update={"hosts": [
        h.model_copy(update={"uri": layout.libvirt_uri(layout.host(h.name))})
        for h in spec.hosts]})


def root_uri(host: str) -> str:
    layout = lab.layout_of(NAME)
    return layout.libvirt_uri(layout.host(host))


@pytest.fixture(scope="module")
def cpulab():
    status = lab.up(LabSpec(name=NAME, hosts=2, subnet=SUBNET))
    r = ahv(NAME, "image", "import", status["guest"]["disk"], "guest")
    assert r.returncode == 0, r.stderr
    yield status, root_cluster()
    if NAME in lab.list_labs():
        lab.down(NAME)


cli = partial(ahv, NAME, timeout_s=120)  # this lab's API


def stored_level() -> dict | None:
    return ok_json(ahv(NAME, "cluster", "cpu", "show", "--json"))["level"]


def ok_json(result: subprocess.CompletedProcess[str]):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_show_has_each_hosts_model_and_a_baseline(cpulab):
    status, _ = cpulab
    shown = ok_json(cli("cluster", "cpu", "show", "--json"))
    assert [h["name"] for h in shown["hosts"]] == ["h1", "h2"]
    assert all(h["model"] and h["domain_type"] == status["domain_type"]
               for h in shown["hosts"])
    assert shown["baseline"]["model"] and shown["baseline"]["features"]
    # Identical lab hosts: the baseline is their host-model, nothing is given up.
    assert shown["given_up"] == {"h1": [], "h2": []}
    assert shown["level"] is None
    print(f"baseline of 2 hosts in {shown['took_s']} s", file=sys.stderr)


def test_apply_then_a_new_vm_boots_with_the_level_and_runs_on_both_hosts(cpulab):
    status, cluster = cpulab
    before = ok_json(cli("vm", "create", "pre", "--memory-mib", "128", "--disk",
                         "guest", "--host", "h2", "--start", "--json"))
    assert before["state"] == "running"
    applied = ok_json(cli("cluster", "cpu", "apply", "--json"))
    level = applied["level"]
    assert level["source"] == "baseline" and level["model"]
    assert applied["next_power_cycle"] == ["pre"]
    assert stored_level() == level  # in the cluster's store
    again = ok_json(cli("cluster", "cpu", "apply", "--json"))
    assert again["redefined"] == []  # applying twice changes nothing
    assert cli("vm", "stop", "pre", "--force").returncode == 0  # 2 cores: free one

    # A NIC with a fixed address: the test guest then opens its shell at once.
    vm = ok_json(cli("vm", "create", "lvl", "--memory-mib", "128", "--disk",
                     "guest", "--nic", OVS_BRIDGE, "--fw-cfg",
                     f"opt/ahvlite/ip={status['guest_addresses'][0]}", "--host", "h1",
                     "--start", "--json"))
    assert vm["state"] == "running"
    with connection(root_uri("h1")) as conn:
        xml = guest.lookup(conn, "lvl").xml()
    el = etree.fromstring(xml.encode()).find("cpu")
    assert (el.get("mode"), el.get("match")) == ("custom", "exact")
    assert el.findtext("model") == level["model"]
    required = {f.get("name") for f in el.findall("feature") if f.get("policy") == "require"}
    assert required and required <= set(level["features"])
    # It booted: the guest answers on its console. Input typed while the guest still
    # boots is partly lost, so ask again until its shell answers.
    deadline = time.monotonic() + 90
    while True:
        try:
            status_code, out = vms.console_run(cluster, "lvl", "grep -m1 'model name' "
                                               "/proc/cpuinfo", timeout_s=10)
            break
        except OperationTimeout:
            assert time.monotonic() < deadline, "lvl did not answer on its console"
    assert status_code == 0 and "model name" in out, out

    check = ok_json(cli("vm", "cpu-check", "lvl", "--json"))
    assert check["can_run_on"] == ["h1", "h2"]
    assert all(r["compatible"] and not r["missing"] for r in check["hosts"].values())


def test_a_vm_with_a_newer_cpu_is_reported_incompatible(cpulab):
    status, _ = cpulab
    name = "newer"
    with connection(root_uri("h2")) as conn:
        d = Domain.parse(designer.simple_domain_xml(SimpleGuest(
            name=name, uuid=str(uuid.uuid4()), domain_type=status["domain_type"],
            kernel=Path(status["guest"]["kernel"]), initrd=Path(status["guest"]["initrd"]),
            cmdline="console=ttyS0")))
        designer.cpu_element(d, HostPolicy(cpu_model="Icelake-Server"), 1)
        guest.define(conn, d.to_xml())
        try:
            check = ok_json(cli("vm", "cpu-check", name, "--json"))
        finally:
            conn.lookupByName(name).undefine()
    assert check["can_run_on"] == []
    for host in ("h1", "h2"):
        assert "avx512f" in check["hosts"][host]["missing"]


def test_set_refuses_a_model_no_host_runs_and_unknown_names(cpulab):
    _status, _ = cpulab
    before = stored_level()
    r = cli("cluster", "cpu", "set", "Icelake-Server")
    assert r.returncode == 4, r.stderr
    assert "cannot run on every host" in r.stderr and "avx512f" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("cluster", "cpu", "set", "Nosuch-CPU")
    assert r.returncode == 2 and "Nosuch-CPU" in r.stderr, r.stderr
    assert stored_level() == before
    # An older model every host runs is accepted and becomes the (manual) level.
    done = ok_json(cli("cluster", "cpu", "set", "Westmere", "--json"))
    assert done["level"]["model"] == "Westmere" and done["level"]["source"] == "manual"


def test_microarchitecture_level_reaches_vms_of_template_deploys(cpulab):
    _status, _ = cpulab
    done = ok_json(cli("cluster", "cpu", "set", "x86-64-v2", "--json"))
    assert done["level"]["model"] == "kvm64" and done["level"]["name"] == "x86-64-v2"
    assert "sse4.2" in done["level"]["features"]
    # A template deploy (not only `vm create`) defines its VMs with the stored level.
    ok_json(cli("vm", "create", "tsrc", "--memory-mib", "128", "--disk", "guest",
                "--host", "h1", "--json"))
    assert cli("template", "create", "tcpu-tp", "--from-vm", "tsrc").returncode == 0
    r = cli("template", "deploy", "tcpu-tp", "--count", "1", "--prefix", "tdep-")
    assert r.returncode == 0, r.stderr
    shown = ok_json(cli("vm", "show", "tdep-1", "--json"))
    with connection(root_uri(shown["host"])) as conn:
        el = etree.fromstring(guest.lookup(conn, "tdep-1").xml().encode())
    assert el.findtext("cpu/model") == "kvm64"
    required = {f.get("name") for f in el.findall("cpu/feature")
                if f.get("policy") == "require"}
    assert {"popcnt", "sse4.2", "ssse3"} <= required


def test_adding_an_older_host_lowers_the_level_or_is_refused_with_strict(cpulab, tmp_path):
    """A cluster of h1 whose stored level h2 cannot run (as if h1 were a newer machine):
    --strict refuses h2 and changes nothing; without it the level drops to the
    baseline of both hosts and the VMs are redefined to it."""
    _status, _ = cpulab
    original = exported()
    saved = tmp_path / "cluster.yaml"
    saved.write_text(original.dump_yaml())
    h2 = original.host("h2")
    assert cli("host", "remove", "h2", "--force").returncode == 0
    put = in_host(lab.layout_of(NAME).host("h1"), sys.executable, "-c", PUT_LEVEL, json.dumps(
        {"model": "Icelake-Server", "vendor": None, "features": [], "disabled": [],
         "source": "baseline", "set_at": 0}))
    assert put.returncode == 0, put.stderr
    labels = [a for k, v in h2.labels.items() for a in ("--label", f"{k}={v}")]
    add = ["host", "add", "h2", "--uri", h2.uri, *labels]
    try:
        r = cli(*add, "--strict")
        assert r.returncode == 4, r.stderr
        assert "h2 cannot run the cluster CPU level Icelake-Server" in r.stderr
        assert "avx512f" in r.stderr and "Traceback" not in r.stderr
        assert [h.name for h in exported().hosts] == ["h1"]
        assert stored_level()["model"] == "Icelake-Server"

        out = ok_json(cli(*add, "--json"))
        level = out["cpu_level"]
        assert level["action"] == "lower" and "avx512f" in level["missing"]
        assert level["level"]["model"] != "Icelake-Server"
        assert [h.name for h in exported().hosts] == ["h1", "h2"]
        stored = stored_level()
        assert stored["model"] == level["level"]["model"] and stored["source"] == "baseline"
        # The x86-64-v2 VMs of the test before are on the hosts: redefined to the new level.
        assert "tdep-1" in level["redefined"]
        # Removed and added again, h2 runs the level now: it stays as it is.
        assert cli("host", "remove", "h2", "--force").returncode == 0
        again = ok_json(cli(*add, "--strict", "--json"))
        assert again["cpu_level"]["action"] == "keep"
        assert stored_level() == stored
    finally:  # h2's own entry again (SSH, OVSDB)
        assert cli("cluster", "apply", "-f", str(saved)).returncode == 0
