"""The CVM on a real two-host lab: plan, refusals that leave nothing behind, deploy on
each host with lab LUNs (loop devices over files), the CVM boots, sees its LUNs, reaches
192.168.5.1 over virbr0 and cannot be moved; remove and `lab down` detach the loops."""

from __future__ import annotations

import json
import re
import subprocess
from functools import partial
from pathlib import Path

import pytest

from ahvlite.cluster import vms
from ahvlite.cluster.legacy import open_cluster_file as load_cluster
from ahvlite.lab import lab
from ahvlite.spec.lab import LabSpec
from tests.clirun import ahv
from tests.waiting import wait_for

from .conftest import in_host

NAME = "tcvm"
SUBNET = "10.213.249.0/26"
HOSTS = ("h1", "h2")
LUN_MIB = (24, 40)  # two LUNs per CVM, sizes told apart in the guest
READY = re.compile(r"AHVLITE-GUEST-READY ip=(\S+)")


@pytest.fixture(scope="module")
def cvmlab():
    status = lab.up(LabSpec(name=NAME, hosts=2, subnet=SUBNET))
    layout = lab.layout_of(NAME)
    # LUN files must be the cluster's (the shared pool's directory), not any host file.
    luns = layout.shared_dir / "cvm-luns"
    luns.mkdir(exist_ok=True)
    files = {}
    for h in HOSTS:
        files[h] = []
        for i, mib in enumerate(LUN_MIB):
            f = luns / f"{h}-lun{i}.img"
            with open(f, "wb") as out:
                out.truncate(mib * 1024 * 1024)
            files[h].append(str(f))
    yield status, layout, files
    if NAME in lab.list_labs():
        lab.down(NAME)


cli = partial(ahv, NAME, timeout_s=300)  # this lab's API


def loops_of(root: Path) -> list[str]:
    out = subprocess.run(["losetup", "--list", "--noheadings", "--raw", "--output",
                          "NAME,BACK-FILE"], capture_output=True, text=True, check=True)
    return sorted(line.split()[0] for line in out.stdout.splitlines()
                  if f"{root}/" in line)


def deploy_args(status, host: str, files, *extra: str) -> list[str]:
    args = ["cvm", "deploy", host, "--image", status["guest"]["disk"], "--vcpus", "1",
            "--memory-mib", "128"]
    for f in files:
        args += ["--lab-lun", f]
    return [*args, *extra]


def test_plan_names_what_cannot_go_and_why(cvmlab):
    _status, _layout, _files = cvmlab
    r = cli("cvm", "plan", "h1", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["name"] == "cvm-h1" and not plan["deployable"]
    assert {c["name"] for c in plan["checks"]} == {"iommu", "vfio", "memory-lock",
                                                   "root-device"}
    # The lab hosts' / is on a block device: which controller holds it is known.
    assert next(c for c in plan["checks"] if c["name"] == "root-device")["ok"]
    assert all(c["fix"] for c in plan["checks"] if not c["ok"])
    for c in plan["controllers"]:  # whatever this machine has, none may leave it
        assert not c["selected"] and c["problems"]
        if c["holds_root"]:
            assert any("root filesystem" in p["message"] for p in c["problems"])
    lab_plan = json.loads(cli("cvm", "plan", "h1", "--lab-lun", "x", "--json").stdout)
    assert lab_plan["deployable"] and lab_plan["selected"] == []


def test_refused_deployments_leave_nothing_behind(cvmlab):
    status, layout, files = cvmlab
    root = lab.lab_root(NAME)
    cases = [
        (deploy_args(status, "h2", [*files["h2"], str(layout.shared_dir / "missing.img")]),
         2, "lab_lun"),
        # a file of the host, not the cluster's: refused before the host is asked
        (deploy_args(status, "h2", ["/etc/shadow"]), 2, "lab_lun"),
        (deploy_args(status, "h2", files["h2"], "--vcpus", "999"), 2, "vcpus"),
        (deploy_args(status, "h2", files["h2"], "--controller", "0000:ff:1f.7"), 2,
         "controller"),
        (["cvm", "deploy", "h2", "--image", str(root / "nope.qcow2")], 2, "image"),
    ]
    plan = json.loads(cli("cvm", "plan", "h2", "--json").stdout)
    for c in plan["controllers"]:  # a real controller of this machine: refused with why
        cases.append((deploy_args(status, "h2", [], "--controller", c["address"]), 2,
                      c["address"]))
    for args, code, word in cases:
        r = cli(*args, "--json")
        assert r.returncode == code, (args, r.stdout, r.stderr)
        err = json.loads(r.stdout)
        assert word in err["message"] and "Traceback" not in r.stderr, err
    shown = json.loads(cli("cvm", "status", "h2", "--json").stdout)
    assert shown == [{"host": "h2", "name": "cvm-h2", "state": "absent", "recorded": False}]
    assert loops_of(root) == []
    pool = layout.host("h2").state_dir / "var/lib/libvirt/ahvlite-cvm"
    assert not pool.exists() or list(pool.iterdir()) == []


def test_cvm_on_each_host_boots_sees_its_luns_and_reaches_the_host(cvmlab):
    status, layout, files = cvmlab
    cluster = load_cluster(Path(status["cluster_file"]))
    for h in HOSTS:
        r = cli(*deploy_args(status, h, files[h]), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        out = json.loads(r.stdout)
        assert out["state"] == "running" and out["autostart"] is True
        assert out["on_crash"] == "restart" and out["pinned"] is True
        assert out["labels"]["ahvlite.io/role"] == "cvm"
        assert out["labels"]["ahvlite.io/pinned"] == "true"
        assert [n["bridge"] for n in out["nics"]] == ["virbr0", "br0"]
        assert list(out["vcpu_pins"].values()) != []
        assert sorted(x["file"] for x in out["lab_luns"]) == files[h]
        assert sorted(out["luns"]) == sorted(x["device"] for x in out["lab_luns"])
    assert len(loops_of(lab.lab_root(NAME))) == 2 * len(LUN_MIB)
    # Pinned vCPUs are real: QEMU's vCPU thread runs only on the chosen host CPU.
    r = cli("cvm", "status", "h1", "--json")
    pin = json.loads(r.stdout)[0]["vcpu_pins"]["0"]
    info = in_host(layout.host("h1"), "virsh", "-c", "qemu:///system", "vcpuinfo", "cvm-h1")
    assert re.search(r"CPU Affinity:\s+\S+", info.stdout), info.stderr
    affinity = re.search(r"CPU Affinity:\s+(\S+)", info.stdout).group(1)
    assert [i for i, c in enumerate(affinity) if c == "y"] == [int(pin)]

    for h in HOSTS:
        log = layout.host(h).state_dir / f"var/log/libvirt/qemu/cvm-{h}-serial.log"
        ready = wait_for(lambda log=log: log.exists() and READY.search(
            log.read_text(errors="replace")), timeout_s=240, interval_s=0.5)
        assert ready, log.read_text(errors="replace")[-800:] if log.exists() else "no log"
        assert ready.group(1) == "192.168.5.2/24"
        rc, out = vms.console_run(
            cluster, f"cvm-{h}",
            "for d in /sys/block/sd*; do echo LUN $(cat $d/size) "
            "$(tr -dc '[:alnum:]' < $d/device/vpd_pg80); done", timeout_s=90)
        assert rc == 0, out
        seen = {m.group(2): int(m.group(1)) for m in re.finditer(r"LUN (\d+) (\w+)", out)}
        assert seen.get("lun0") == LUN_MIB[0] * 2048 and seen.get("lun1") == LUN_MIB[1] * 2048
        rc, out = vms.console_run(cluster, f"cvm-{h}", "ping -c 2 -W 5 192.168.5.1",
                                  timeout_s=90)
        assert rc == 0 and "2 packets received" in out, out


def test_the_cvm_is_never_moved(cvmlab):
    status, _layout, _files = cvmlab
    r = cli("vm", "migrate", "cvm-h1", "--to", "h2", "--json")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "pinned" in json.loads(r.stdout)["message"]
    info = vms.show_vm(load_cluster(Path(status["cluster_file"])), "cvm-h1")
    assert info.host == "h1"
    ha = pytest.importorskip("ahvlite.sched.restart")
    record = ha.VmRecord(info.name, info.host, info.memory_mib, True, info.labels)
    assert record.is_cvm and not record.protected
    # A second CVM on the same host is refused.
    r = cli(*deploy_args(status, "h1", []), "--json")
    assert r.returncode == 4 and "already has its CVM" in json.loads(r.stdout)["message"]


def test_remove_and_lab_down_detach_the_loops(cvmlab):
    _status, _layout, _files = cvmlab
    root = lab.lab_root(NAME)
    r = cli("cvm", "remove", "h2", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["undefined"] and len(out["detached_loops"]) == len(LUN_MIB)
    assert sorted(out["deleted_volumes"]) == ["cvm-h2-boot.qcow2", "cvm-h2-seed.iso"]
    assert json.loads(cli("cvm", "status", "h2", "--json").stdout)[0]["state"] == "absent"
    assert len(loops_of(root)) == len(LUN_MIB)  # h1's are still in use
    down = lab.down(NAME)
    assert len(down["removed"]["loops"]) == len(LUN_MIB)
    assert loops_of(root) == []
