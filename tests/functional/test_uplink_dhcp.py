"""The lab's uplink DHCP server, on a stand-in lab (its top-of-rack bridge and state
file only, no hosts): a client on VLAN 20 gets an address of VLAN 20's range, an
untagged one on the lab bridge nothing, and ``lab down`` ends it all by PID.

The client on VLAN 20 is an access port of the uplink switch itself (the kernel has no
VLAN devices to tag a frame with); the trunk is crossed by real guests in
tests/lab/test_ipam.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from ahvlite.errors import Conflict
from ahvlite.lab import lab, processes, uplinkdhcp
from ahvlite.lab.layout import LabLayout, netns_prefix, plan_layout, veth_prefix
from ahvlite.lab.state import LabState
from ahvlite.net import netlink
from ahvlite.net.ovs import ops
from ahvlite.net.ovs.api import ovsdb
from ahvlite.spec.lab import LabSpec

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(p) for p in (
        "ovsdb-server", "ovs-vswitchd", "dnsmasq", "busybox", "nsenter", "ethtool")),
    reason="needs root, Open vSwitch, dnsmasq-base, busybox, util-linux and ethtool")

NAME = "tupl"
VLAN20_MAC = "52:54:00:d2:00:20"
LEASE = re.compile(r"lease of (\S+) obtained")


@pytest.fixture
def standin(monkeypatch) -> Iterator[LabLayout]:
    for ns in netlink.list_netns():
        if ns.startswith(netns_prefix(NAME)):
            pytest.fail(f"namespace {ns} is left from an earlier run: remove it first")
    base = Path(tempfile.mkdtemp(prefix="ahvt-uplink-"))
    base.chmod(0o755)  # dnsmasq, as its own user, writes its leases below it
    monkeypatch.setenv("AHVLITE_LAB_DIR", str(base))
    # A subnet no link carries: nothing here is addressed from the root namespace.
    layout = plan_layout(LabSpec(name=NAME, hosts=1, subnet="10.213.243.0/26"), base / NAME)
    LabState(name=NAME, subnet=str(layout.subnet), hosts=1, phase="up",
             bridge=layout.bridge).save(layout.state_file)
    netlink.create_isolated_bridge(layout.bridge)
    try:
        yield layout
    finally:
        if layout.state_file.exists():
            lab.teardown(NAME, keep=False)
        shutil.rmtree(base, ignore_errors=True)


def udhcpc(ns: str) -> str | None:
    done = subprocess.run(
        ["nsenter", f"--net={netlink.netns_path(ns)}", "busybox", "udhcpc", "-f", "-q",
         "-n", "-i", "eth0", "-t", "3", "-T", "1", "-A", "1", "-s", "/bin/true"],
        capture_output=True, text=True, timeout=30, check=False)
    found = LEASE.search(done.stderr + done.stdout)
    return found.group(1) if done.returncode == 0 and found else None


def test_vlan_clients_lease_from_their_range_and_lab_down_ends_it(standin):
    layout = standin
    up = uplinkdhcp.start(NAME)
    assert up["running"] and set(up["processes"]) == {"ovsdb-server", "ovs-vswitchd",
                                                      "dnsmasq"}
    with pytest.raises(Conflict):
        uplinkdhcp.start(NAME)
    at = uplinkdhcp.place(layout)
    vlan20 = f"{netns_prefix(NAME)}c20"
    untagged = f"{netns_prefix(NAME)}c0"
    # On VLAN 20: an access port of the uplink switch.
    netlink.ensure_netns(vlan20)
    netlink.create_veth_pair("c20", "eth0", far_ns=vlan20, far_mac=VLAN20_MAC,
                             ns=at.switch_ns)
    with ovsdb(f"unix:{at.db_sock}") as api:
        ops.ensure_access_port(api, bridge=uplinkdhcp.BRIDGE, name="c20", tag=20,
                               external_ids={})
        ops.wait_ofport(api, "c20")
    # Untagged, on the lab bridge: the trunk carries it, no VLAN port hears it.
    netlink.ensure_netns(untagged)
    netlink.create_veth_into(f"{veth_prefix(NAME)}c0", "eth0", untagged,
                             bridge=layout.bridge)
    netlink.set_link_up("eth0", ns=untagged)
    for ns, dev in ((vlan20, "eth0"), (untagged, "eth0"), (at.switch_ns, "c20")):
        subprocess.run(["nsenter", f"--net={netlink.netns_path(ns)}", "ethtool", "-K", dev,
                        "tx", "off"], check=True, capture_output=True)

    got = udhcpc(vlan20)
    assert got is not None and IPv4Address("10.20.0.10") <= IPv4Address(got) \
        <= IPv4Address("10.20.0.19"), uplinkdhcp.log_text(NAME)[-2000:]
    assert {"mac": VLAN20_MAC, "ip": got}.items() <= next(
        x for x in uplinkdhcp.leases(NAME) if x["mac"] == VLAN20_MAC).items()
    assert udhcpc(untagged) is None
    untagged_mac = netlink.link_mac("eth0", ns=untagged)
    assert untagged_mac and untagged_mac not in uplinkdhcp.log_text(NAME)

    recorded = [p for p in lab.state_of(NAME).processes if p.host == uplinkdhcp.HOST]
    lab.down(NAME)
    assert recorded and not any(processes.is_alive(p) for p in recorded)
    assert not [n for n in netlink.list_netns() if n.startswith(netns_prefix(NAME))]
    assert not netlink.links_with_prefix(veth_prefix(NAME))
    assert not netlink.link_exists(at.root_veth) and not netlink.link_exists(layout.bridge)
