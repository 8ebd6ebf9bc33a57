"""The VM layer on a real lab: UEFI + vTPM + genid VM on host 2, hot-plug, overcommit,
delete that leaves nothing behind, and templates."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from ahvlite.cluster.legacy import open_cluster_file as load_cluster
from ahvlite.lab import lab
from ahvlite.lab.layout import OVS_BRIDGE
from ahvlite.spec.lab import LabSpec
from ahvlite.spec.vm import BootSpec, DiskSpec, NicSpec, VmSpec
from ahvlite.virt import guest
from ahvlite.virt.conn import connection
from tests.clirun import ahv

from .conftest import in_host

NAME = "tvm"
SUBNET = "10.213.246.0/26"
READY = re.compile(r"AHVLITE-GUEST-READY ip=(\S+)")


@pytest.fixture(scope="module")
def vmlab():
    status = lab.up(LabSpec(name=NAME, hosts=2, subnet=SUBNET))
    layout = lab.layout_of(NAME)
    cluster = load_cluster(Path(status["cluster_file"]))  # to look at libvirt directly
    ok(ahv(NAME, "image", "import", status["guest"]["disk"], "guest", "--json"))
    yield status, layout, cluster
    if NAME in lab.list_labs():
        lab.down(NAME)


def ok(r: subprocess.CompletedProcess[str]) -> Any:
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def serial_log(name: str) -> str:
    return f"/var/log/libvirt/qemu/{name}-serial.log"


def wait_ready(layout, host: str, name: str, timeout_s: float = 240) -> str:
    log = layout.host(host).state_dir / serial_log(name).lstrip("/")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists():
            m = READY.search(log.read_text(errors="replace"))
            if m:
                return m.group(1)
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-800:] if log.exists() else "(no log)"
    raise AssertionError(f"{name} not ready in {timeout_s} s: {tail}")


def run_in(_cluster, name: str, command: str) -> str:
    """``command`` on the VM's serial console (a vm.console.run task on the leader)."""
    r = ahv(NAME, "vm", "console", name, "--command", command, "--timeout", "60", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["exit_status"] == 0, r.stdout + r.stderr
    return out["output"]


def shared_files(layout, name: str) -> list[str]:
    return sorted(p.name for p in layout.shared_dir.iterdir() if name in p.name)


def test_uefi_vtpm_genid_vm_with_two_disks_and_two_nics_boots_on_host_2(vmlab):
    status, layout, cluster = vmlab
    address = status["guest_addresses"][0]
    spec = VmSpec(
        name="big", vcpus=1, memory_mib=160,  # OVMF needs more than SeaBIOS's 128
        disks=[DiskSpec(image="guest"), DiskSpec(size_mib=16, bus="virtio")],
        nics=[NicSpec(network=OVS_BRIDGE),
              NicSpec(network=OVS_BRIDGE, mode="trunk", trunk_vlans=(10, 20))],
        boot=BootSpec(firmware="uefi"), vtpm=True, serial_log=serial_log("big"),
        fw_cfg={"opt/ahvlite/ip": address})
    # A full spec (a serial log file is no `vm create` option): the task the CLI submits.
    task = ok(ahv(NAME, "task", "submit", "vm.spec.create", "-p",
                  f"spec={spec.model_dump_json()}", "-p", "host=h2", "-p", "start=true",
                  "--json"))
    info = ok(ahv(NAME, "task", "wait", task["id"], "--json"))["result"]
    assert info["host"] == "h2" and info["state"] == "running"
    assert info["genid"] == spec.genid
    assert wait_ready(layout, "h2", "big") == address

    out = run_in(cluster, "big", "ls /sys/block; ls /sys/class/net; ls /sys/class/tpm; "
                                 "ls -d /sys/firmware/efi; dmesg | grep -c VMGENID")
    words = out.split()
    assert {"sda", "vda"} <= set(words), out
    assert {"eth0", "eth1"} <= set(words), out
    assert "tpm0" in words and "/sys/firmware/efi" in words, out
    assert words[-1] != "0", out  # the ACPI VMGENID table is there

    # Both NICs are OVS ports on h2's br0 carrying the VM's identity.
    ids = in_host(layout.host("h2"), "ovs-vsctl", "--bare", "--columns=external_ids",
                  "list", "Interface").stdout
    for nic in info["nics"]:
        assert nic["mac"] in ids and nic["interface_id"] in ids

    shown = json.loads(ahv(NAME, "vm", "show", "big", "--json").stdout)
    assert shown["host"] == "h2" and shown["firmware"] == "uefi" and shown["vtpm"]
    listed = json.loads(ahv(NAME, "vm", "list", "--json").stdout)
    assert [v["name"] for v in listed if v["host"] == "h2"] == ["big"]
    assert address in next(v for v in listed if v["name"] == "big")["ips"]


def test_hot_plug_a_disk_and_a_nic_into_the_running_vm(vmlab):
    _status, _layout, cluster = vmlab
    r = ahv(NAME, "vm", "disk", "add", "big", "16M", "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(d["dev"] for d in json.loads(r.stdout)["disks"]) == ["sda", "sdb", "vda"]
    r = ahv(NAME, "vm", "nic", "add", "big", f"{OVS_BRIDGE}:mac=52:54:00:00:fe:01", "--json")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = run_in(cluster, "big", "ls /sys/block /sys/class/net")
        if "sdb" in out.split() and "eth2" in out.split():
            break
        time.sleep(1)
    assert "sdb" in out.split() and "eth2" in out.split(), out
    r = ahv(NAME, "vm", "nic", "remove", "big", "52:54:00:00:fe:01", "--json")
    assert r.returncode == 0, r.stderr
    assert "52:54:00:00:fe:01" not in [n["mac"] for n in json.loads(r.stdout)["nics"]]


def test_overcommit_vm_has_a_balloon_and_runs_below_its_memory(vmlab):
    _status, _layout, cluster = vmlab
    r = ahv(NAME, "vm", "create", "oc", "--memory-mib", "128", "--disk", "guest",
            "--overcommit", "--host", "h1", "--start", "--json")
    assert r.returncode == 0, r.stderr
    vm = json.loads(r.stdout)
    assert vm["overcommit"] and vm["memory_mib"] == 128
    uri = cluster.host("h1").uri
    with connection(uri) as conn:
        g = guest.lookup(conn, "oc")
        dom = g.dom
        config = etree.fromstring(g.xml(inactive=True).encode())
        assert int(config.findtext("currentMemory")) < int(config.findtext("memory"))
        # The guest's virtio_balloon driver inflates the balloon to the target once
        # it has booted: the running VM then holds less than its memory.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and dom.info()[2] >= dom.info()[1]:
            time.sleep(1)
        assert dom.info()[2] < dom.info()[1], dom.info()
        live = etree.fromstring(g.xml().encode())
    assert ok(ahv(NAME, "vm", "show", "oc", "--json"))["current_memory_mib"] < 128
    balloon = live.find("devices/memballoon")
    assert balloon.get("model") == "virtio" and balloon.get("freePageReporting") == "on"
    assert int(live.findtext("currentMemory")) < int(live.findtext("memory"))
    assert ahv(NAME, "vm", "delete", "oc", "--force").returncode == 0


def test_delete_leaves_no_volume_nvram_or_tpm_state(vmlab):
    _status, layout, _cluster = vmlab
    info = ok(ahv(NAME, "vm", "show", "big", "--json"))
    tpm_dir = layout.host("h2").state_dir / "var/lib/libvirt/swtpm" / info["uuid"]
    assert tpm_dir.exists()
    assert [f for f in shared_files(layout, "big")
            if re.fullmatch(r"vm-big-VARS-[0-9a-f]{8}\.fd", f)]
    r = ahv(NAME, "vm", "delete", "big")
    assert r.returncode == 4 and "running" in r.stderr  # running: needs --force
    r = ahv(NAME, "vm", "delete", "big", "--force", "--json")
    assert r.returncode == 0, r.stderr
    assert shared_files(layout, "big") == []
    assert not tpm_dir.exists()
    assert "big" not in [v["name"] for v in json.loads(ahv(NAME, "vm", "list",
                                                               "--json").stdout)]


def test_template_versions_and_deploy_count_5(vmlab):
    _status, layout, _cluster = vmlab
    r = ahv(NAME, "vm", "create", "tsrc", "--memory-mib", "128", "--disk", "guest",
            "--nic", OVS_BRIDGE)
    assert r.returncode == 0, r.stderr
    r = ahv(NAME, "template", "create", "tp", "--from-vm", "tsrc", "--json")
    assert r.returncode == 0, r.stderr
    r = ahv(NAME, "vm", "create", "tsrc2", "--cpus", "2", "--memory-mib", "128",
            "--disk", "guest")
    assert r.returncode == 0, r.stderr
    r = ahv(NAME, "template", "version", "add", "tp", "--from-vm", "tsrc2", "--json")
    assert json.loads(r.stdout)["active_version"] == 2
    r = ahv(NAME, "template", "set-active", "tp", "1", "--json")
    assert json.loads(r.stdout)["active_version"] == 1
    versions = json.loads(ahv(NAME, "template", "versions", "tp", "--json").stdout)
    assert [v["version"] for v in versions["versions"]] == [1, 2]

    user_data = layout.root / "user-data"
    user_data.write_text("#cloud-config\nruncmd: [echo hi]\n")
    r = ahv(NAME, "template", "deploy", "tp", "--count", "5", "--prefix", "web",
            "--user-data", str(user_data), "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)["vms"]
    try:
        assert sorted(v["name"] for v in made) == [f"web{i}" for i in range(1, 6)]
        assert all(v["state"] == "running" for v in made)
        assert {v["host"] for v in made} == {"h1", "h2"}  # placed by free memory
        for key in ("uuid", "genid"):
            assert len({v[key] for v in made}) == 5
        assert len({v["nics"][0]["mac"] for v in made}) == 5
        assert all(v["template"] == "tp" and v["vcpus"] == 1 for v in made)
        # Disks are backing-file clones of the template's own copy, plus a seed CD-ROM.
        from ahvlite.virt import seediso

        for v in made:
            disk = next(d for d in v["disks"] if d["name"] == "disk0")
            tag = re.fullmatch(rf"vm-{v['name']}-disk0-([0-9a-f]{{8}})\.qcow2", disk["volume"])
            assert tag, disk["volume"]
            seed = layout.shared_dir / f"vm-{v['name']}-seed-{tag[1]}.iso"
            label, files = seediso.read_iso(seed.read_bytes())
            assert label == "cidata" and b"runcmd" in files["user-data"]
            assert v["uuid"].encode() in files["meta-data"]
        # An old version stays deployable.
        r = ahv(NAME, "template", "deploy", "tp", "--version", "2", "--prefix", "old",
                "--no-start", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["vms"][0]["vcpus"] == 2
    finally:
        for name in [v["name"] for v in made] + ["old1", "tsrc", "tsrc2"]:
            ahv(NAME, "vm", "delete", name, "--force")
    assert [p.name for p in layout.shared_dir.glob("vm-*")] == []
