"""Host networking on a 2-host lab, proved with traffic: VLANs, trunk, bond failover, idempotence.

Guests get addresses in one IP subnet (172.31.243.0/24) on purpose: only the VLAN
separates them, so a ping that crosses VLANs would show a leak.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from ahvlite.lab import guests, lab
from ahvlite.lab.guests import GUEST_BASE, LabGuest
from ahvlite.lab.layout import SHARED_POOL
from ahvlite.net import netlink
from ahvlite.net.ovs import ops as ovs_ops
from ahvlite.net.ovs.api import ovsdb
from ahvlite.spec.lab import LabSpec
from ahvlite.spec.smallguest import SimpleGuest
from ahvlite.spec.vif import OvsAccessNic, OvsTrunkNic
from ahvlite.virt import designer, guest, storage
from ahvlite.virt.conn import connection
from tests.clirun import ahv

from .conftest import in_host

NAME = "tnet"
SUBNET = "10.213.243.0/26"
BLUE, RED = 10, 20


@pytest.fixture(scope="module")
def netlab():
    lab.up(LabSpec(name=NAME, hosts=2, subnet=SUBNET))
    layout = lab.layout_of(NAME)
    for name, vlan in (("blue", BLUE), ("red", RED)):
        r = ahv(NAME, "net", "create", name, "--vlan", str(vlan))
        assert r.returncode == 0, r.stderr
    yield layout
    if NAME in lab.list_labs():
        lab.down(NAME)


cli = partial(ahv, NAME, timeout_s=120)  # this lab's API


def host_ovs(name: str):
    """The lab host's OVSDB over its unix socket, seen from here (instrumentation)."""
    return ovsdb(f"unix:{lab.layout_of(NAME).host(name).ovsdb_sock}")


def boot(layout, host_name: str, name: str, address: str, nic: dict) -> LabGuest:
    state = lab.state_of(NAME)
    host = layout.host(host_name)
    vm_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"ahvlite:{NAME}:{name}"))
    mac = guests.guest_mac(NAME, name)
    serial_log = f"/var/log/libvirt/qemu/{name}-serial.log"
    with connection(layout.libvirt_uri(host)) as conn:
        guest.destroy_and_undefine(conn, name)
        pool = storage.ensure_dir_pool(conn, SHARED_POOL, layout.shared_dir)
        disk = storage.create_overlay(pool, f"{name}.qcow2", layout.shared_dir / GUEST_BASE)
        kind = OvsTrunkNic if nic.get("mode") == "trunk" else OvsAccessNic
        port = kind(vm_uuid=vm_uuid, mac=mac, **{k: v for k, v in nic.items() if k != "mode"})
        # The VM NIC contract under test: our <interface>, exactly as rendered.
        xml = designer.simple_domain_xml(SimpleGuest(
            name=name, uuid=vm_uuid, domain_type=state.domain_type, disk=disk,
            nics=(port,), fw_cfg={"opt/ahvlite/ip": address, "opt/ahvlite/hostname": name},
            serial_log=Path(serial_log)))
        (host.state_dir / serial_log.lstrip("/")).unlink(missing_ok=True)
        dom = guest.define(conn, xml)
        dom.start()
    g = LabGuest(name=name, host=host_name, address=address, mac=mac, disk=str(disk),
                 serial_log=serial_log)
    guests.wait_ready(layout, g, timeout_s=240)
    return g


@pytest.fixture(scope="module")
def vlan_guests(netlab):
    layout = netlab
    plan = [("h1", "blue1", "172.31.243.11/24", {"vlan": BLUE}),
            ("h2", "blue2", "172.31.243.12/24", {"vlan": BLUE}),
            ("h2", "red2", "172.31.243.21/24", {"vlan": RED}),
            ("h1", "trunk1", "172.31.243.31/24",
             {"mode": "trunk", "native_vlan": BLUE, "trunk_vlans": (RED,)})]
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        booted = list(pool.map(lambda p: boot(layout, *p), plan))
    guests.record(layout, lab.state_of(NAME), booted)
    return {g.name: g for g in booted}


def ping(layout, src: LabGuest, dst: LabGuest, count: int = 2) -> bool:
    rc, out = guests.console_run(layout, src, f"ping -c {count} -W 2 {dst.ip}",
                                 timeout_s=30)
    return rc == 0 and re.search(r", 0% packet loss", out) is not None


def test_fresh_lab_matches_its_spec_and_reapply_changes_nothing(netlab):
    r = cli("net", "apply", "--json")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert [r["steps"] for r in results] == [[], []]
    assert [r["ovsdb_changes"] for r in results] == [0, 0]


def test_same_vlan_across_hosts_pings_and_other_vlan_cannot(netlab, vlan_guests):
    g = vlan_guests
    assert ping(netlab, g["blue1"], g["blue2"])
    assert not ping(netlab, g["blue1"], g["red2"])
    assert not ping(netlab, g["red2"], g["blue2"])


def test_trunk_guest_native_vlan_untagged_reaches_blue_only(netlab, vlan_guests):
    g = vlan_guests
    assert ping(netlab, g["trunk1"], g["blue2"])
    assert not ping(netlab, g["trunk1"], g["red2"])


def test_trunk_guest_reaches_the_tagged_vlan_through_a_sub_interface(netlab, vlan_guests):
    g = vlan_guests
    # eth0.20 carries VLAN 20 tagged; the same IP subnet exists on both interfaces, so
    # `ping -I` picks which one: only the VLAN tag decides who can answer.
    rc, out = guests.console_run(
        netlab, g["trunk1"],
        f"ip link add link eth0 name eth0.{RED} type vlan id {RED} && "
        f"ip addr add 172.31.243.32/24 dev eth0.{RED} && ip link set eth0.{RED} up",
        timeout_s=30)
    assert rc == 0, out
    tagged = f"ping -I eth0.{RED} -c 2 -W 2"
    rc, out = guests.console_run(netlab, g["trunk1"], f"{tagged} {g['red2'].ip}",
                                 timeout_s=30)
    assert rc == 0 and ", 0% packet loss" in out, out
    rc, out = guests.console_run(netlab, g["trunk1"], f"{tagged} {g['blue2'].ip}",
                                 timeout_s=30)
    assert rc != 0, out


def test_ovsdb_and_net_show_report_vm_ports_with_vlans(netlab, vlan_guests):
    result = cli("net", "show", "h1", "--json")
    assert result.returncode == 0, result.stderr
    (h1,) = json.loads(result.stdout)
    (br0,) = [b for b in h1["bridges"] if b["name"] == "br0"]
    ports = {p["mac"]: p for p in br0["vm_ports"]}
    blue1, trunk1 = ports[vlan_guests["blue1"].mac], ports[vlan_guests["trunk1"].mac]
    assert (blue1["mode"], blue1["tag"], blue1["networks"]) == ("access", BLUE, ["blue"])
    assert (trunk1["mode"], trunk1["vlan_mode"], trunk1["tag"]) == ("trunk",
                                                                    "native-untagged", BLUE)
    assert trunk1["trunks"] == [BLUE, RED] and trunk1["networks"] == ["blue", "red"]
    vm = str(uuid.uuid5(uuid.NAMESPACE_URL, f"ahvlite:{NAME}:blue1"))
    assert blue1["vm_uuid"] == vm
    assert blue1["iface_id"] == OvsAccessNic(vm_uuid=vm, mac=vlan_guests["blue1"].mac).interface_id
    (bond,) = br0["bonds"]
    assert bond["active_member"] in ("eth0", "eth1")
    assert {m["name"]: m["link_state"] for m in bond["members"]} == {"eth0": "up", "eth1": "up"}
    assert h1["virbr0"] == {"exists": True, "addresses": ["192.168.5.1/24"],
                            "attached_to_ovs": False}


def test_virbr0_cannot_reach_br0_networks(netlab, vlan_guests):
    h1 = netlab.host("h1")
    # virbr0 is a separate Linux bridge: from its address nothing on br0 answers.
    for target in (netlab.host("h2").ip, vlan_guests["blue1"].ip):
        r = in_host(h1, "ping", "-c", "1", "-W", "1", "-I", "virbr0", target)
        assert r.returncode != 0, r.stdout
    assert netlink.bridge_ports("virbr0", ns=h1.netns) == []


def _ping_log(src_host, dst_ip: str, seconds: float) -> subprocess.Popen[str]:
    from ahvlite.lab import namespaces

    count = int(seconds / 0.1)
    return subprocess.Popen(
        [*namespaces.enter_argv(src_host.netns, src_host.mnt_ns_file, src_host.uts_ns_file),
         "ping", "-n", "-i", "0.1", "-c", str(count), "-W", "1", dst_ip],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _lost(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
    assert m, out
    return int(m[1]), int(m[1]) - int(m[2])


def test_unchanged_apply_loses_no_ping_and_makes_zero_ovsdb_changes(netlab, vlan_guests):
    h1, h2 = netlab.host("h1"), netlab.host("h2")
    pinger = _ping_log(h2, h1.ip, 4)
    time.sleep(0.5)
    result = cli("net", "apply", "--json")
    out, _ = pinger.communicate(timeout=30)
    assert result.returncode == 0, result.stderr
    assert [(r["steps"], r["ovsdb_changes"]) for r in json.loads(result.stdout)] == [
        ([], 0), ([], 0)]
    sent, lost = _lost(out)
    assert sent >= 30 and lost == 0, out


def test_bond_failover_loses_at_most_two_pings(netlab, vlan_guests):
    h1, h2 = netlab.host("h1"), netlab.host("h2")

    def active() -> str | None:
        with host_ovs("h1") as api:
            bridges, _ = ovs_ops.observe_ovs(api)
        return next(p.active_member for b in bridges for p in b.ports if p.name == "br0-up")

    before = active()
    assert before in ("eth0", "eth1")
    root_end = h1.veths[("eth0", "eth1").index(before)]
    pinger = _ping_log(h2, h1.ip, 6)
    time.sleep(2)
    t0 = time.monotonic()
    netlink.set_link_down(root_end)  # the top-of-rack side: a pulled cable
    try:
        deadline = time.monotonic() + 5
        while active() == before and time.monotonic() < deadline:
            time.sleep(0.05)
        switched_s = time.monotonic() - t0
        after = active()
        out, _ = pinger.communicate(timeout=30)
    finally:
        netlink.set_link_up(root_end)
    sent, lost = _lost(out)
    print(f"bond failover: {before} -> {after} in {switched_s:.2f} s, lost {lost}/{sent} "
          "pings at 100 ms", file=sys.stderr)
    assert after not in (None, before)
    assert lost <= 2, out


def test_bond_member_change_adds_before_removing_and_keeps_the_uplink(netlab, vlan_guests):
    h1, h2 = netlab.host("h1"), netlab.host("h2")
    # A third uplink for h1, like a new NIC cabled to the same switch.
    extra = f"v{NAME}1c"
    netlink.create_veth_into(extra, "eth2", h1.netns, bridge=netlab.bridge)
    netlink.set_link_up("eth2", ns=h1.netns)
    # As lab up does for eth0/eth1: the userspace datapath leaves TX checksums to an
    # offload veths do not do, and TCP (TLS to OVSDB) stalls while ping still works.
    subprocess.run(["ethtool", "-K", extra, "tx", "off"], check=True, capture_output=True)
    assert in_host(h1, "ethtool", "-K", "eth2", "tx", "off").returncode == 0
    try:
        dry = cli("net", "bond", "set", "h1", "--members", "eth0,eth2", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        steps = [(s["step"], s["phase"]) for s in json.loads(dry.stdout)[0]["steps"]]
        assert steps == [("AddBondMember", 1), ("RemoveBondMember", 2)]
        assert "eth2" not in cli("cluster", "export").stdout  # dry run records nothing
        pinger = _ping_log(h2, h1.ip, 4)
        time.sleep(0.5)
        done = cli("net", "bond", "set", "h1", "--members", "eth0,eth2", "--json")
        out, _ = pinger.communicate(timeout=30)
        assert done.returncode == 0, done.stderr
        _, lost = _lost(out)
        assert lost <= 2, out
        with host_ovs("h1") as api:
            bridges, _ = ovs_ops.observe_ovs(api)
        bond = next(p for b in bridges for p in b.ports if p.name == "br0-up")
        assert bond.interfaces == ("eth0", "eth2")
        again = cli("net", "apply", "--host", "h1", "--json")
        assert json.loads(again.stdout)[0]["ovsdb_changes"] == 0
        bad = cli("net", "bond", "set", "h1", "--members", "eth0,eth9")
        assert bad.returncode == 2 and "eth9" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        cli("net", "bond", "set", "h1", "--members", "eth0,eth1")
        netlink.delete_link(extra)
