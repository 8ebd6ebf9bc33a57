"""Managed networks on a 3-host lab: real guests get their IPAM address by DHCP from
their own host, and nothing of it reaches the top-of-rack bridge.

One lab for the module (the tests run in order and build on each other): blue (VLAN
10) is managed, red (VLAN 20) is not, and a DHCP server on the uplink side (the site's
own, ahvlite/lab/uplinkdhcp.py) hands out addresses on both VLANs. Five VMs deployed
from a template on blue get their allocations and ping each other while a capture on
the lab bridge sees blue's DHCP nowhere and the uplink server hears none of it; red's
VM (the positive control) gets its address from the uplink server; a guest that takes another
address or MAC is cut off; a migrated VM renews the same address; bad requests change
nothing; last, the leader's host loses power: a VM started elsewhere still gets its
lease and HA restarts the dead host's VM with its address.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from ahvlite.controller.daemon import LEADER_KEY
from ahvlite.errors import AhvliteError
from ahvlite.lab import faults, guests, lab, processes, uplinkdhcp
from ahvlite.lab.drills import running_on
from ahvlite.lab.layout import LabLayout, bridge_name
from ahvlite.lab.services import open_lab_store
from ahvlite.spec.lab import LabSpec
from ahvlite.virt import guest
from ahvlite.virt.conn import connection
from tests.clirun import ahv
from tests.lab.conftest import down_keeping_logs
from tests.lab.placements import Placements
from tests.waiting import wait_for

NAME = "tipam"
SUBNET = "10.213.232.0/26"
BLUE = ("--vlan", "10", "--subnet", "10.10.0.0/24", "--gateway", "10.10.0.1",
        "--pool", "10.10.0.100-10.10.0.199", "--dns", "10.10.0.2",
        "--domain", "lab.example", "--mtu", "1400")
WEBS = [f"web{i}" for i in range(1, 6)]
cli = partial(ahv, NAME, timeout_s=300)


def ok(*argv: str) -> Any:
    r = cli(*argv, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def ipamlab(tmp_path_factory):
    status = lab.up(LabSpec(name=NAME, hosts=3, subnet=SUBNET))
    layout = lab.layout_of(NAME)
    coord = open_lab_store(layout)
    try:
        assert wait_for(lambda: coord.get(LEADER_KEY), 60, 0.2)
        ok("image", "import", status["guest"]["disk"], "guest")
        ok("net", "create", "blue", *BLUE)
        ok("net", "create", "red", "--vlan", "20")
        ok("vm", "create", "src", "--memory-mib", "128", "--disk", "guest", "--nic", "blue")
        ok("template", "create", "tp", "--from-vm", "src")
        ok("vm", "delete", "src")
        uplinkdhcp.start(NAME)
        yield layout, coord, tmp_path_factory.mktemp("tipam")
    finally:
        coord.close()
        down_keeping_logs(NAME, tmp_path_factory.mktemp("tipam-logs"),
                          ("controller.log", "netagent.log", "agent.log"))


def host_of(layout: LabLayout, vm: str) -> str:
    on = [h.name for h in layout.hosts if vm in running_on(layout, h.name)]
    assert len(on) == 1, f"{vm} runs on {on}"
    return on[0]


def console(layout: LabLayout, vm: str, command: str, timeout_s: float = 30) -> tuple[int, str]:
    """``command`` on ``vm``'s serial console, straight through its host's libvirt (no
    task: it works while the cluster has no leader)."""
    g = guests.LabGuest(vm, host_of(layout, vm), "", "", "", "")
    return guests.console_run(layout, g, command, timeout_s=timeout_s)


def leased(layout: LabLayout, vm: str, timeout_s: float = 300, mtu: str | None = "1400"
           ) -> str:
    """The address ``vm``'s guest took from its first DHCP lease, as its eth0 holds it
    (a booting guest's console does not answer yet: ask again); ``mtu``: the MTU the
    lease must have set (None: the server sends none)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            rc, out = console(layout, vm, "cat /run/ahvlite-dhcp-lease && "
                              "ip -4 -o addr show dev eth0 && cat /sys/class/net/eth0/mtu",
                              timeout_s=10)
            if rc == 0:
                lease, addr, has_mtu = out.splitlines()[-3:]
                ip = lease.split()[0]
                assert f"inet {ip} " in addr, out
                assert mtu is None or has_mtu.strip() == mtu, out
                return ip.split("/")[0]
        except (AhvliteError, AssertionError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{vm}: no DHCP lease in {timeout_s:.0f} s ({exc})") \
                    from None
        time.sleep(2)


def allocations() -> dict[str, str]:
    return {a["vm"]: a["ip"] for a in ok("net", "show", "blue")["allocations"]}


def pings(layout: LabLayout, vm: str, ips: list[str]) -> bool:
    rc, _ = console(layout, vm, " && ".join(f"ping -c 2 -W 2 {ip} > /dev/null"
                                           for ip in ips), timeout_s=60)
    return rc == 0


def test_deployed_vms_get_their_allocations_by_dhcp_and_none_leaves_the_host(ipamlab):
    layout, _, tmp = ipamlab
    pcap, log = tmp / "deploy.pcap", tmp / "tcpdump.err"
    dump = subprocess.Popen(
        ["tcpdump", "-i", bridge_name(NAME), "-nn", "-e", "-U", "-w", str(pcap),
         "udp port 67 or udp port 68 or (vlan and (udp port 67 or udp port 68))"],
        stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        assert wait_for(lambda: "listening on" in log.read_text(), 10, 0.1), log.read_text()
        t0 = time.monotonic()
        # The positive control: an unmanaged network's DHCP goes out to the uplink.
        red = ok("vm", "create", "redvm", "--memory-mib", "128", "--disk", "guest",
                 "--nic", "red", "--start")
        made = ok("template", "deploy", "tp", "--count", "5", "--prefix", "web")["vms"]
        deploy_s = time.monotonic() - t0
        got = {vm: leased(layout, vm) for vm in WEBS}
        leases_s = time.monotonic() - t0
        red_ip = leased(layout, "redvm", mtu=None)
    finally:
        os.kill(dump.pid, signal.SIGINT)
        dump.wait(10)
    frames = subprocess.run(["tcpdump", "-r", str(pcap), "-nn", "-e"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert sorted(v["name"] for v in made) == WEBS
    assert len({v["host"] for v in made}) >= 2, made
    alloc = allocations()
    assert got == {vm: alloc[vm] for vm in WEBS}
    assert all(IPv4Address(ip) in IPv4Network("10.10.0.0/24") for ip in got.values())
    listed = {v["name"]: v["ips"] for v in ok("vm", "list")}
    assert all(got[vm] in listed[vm] for vm in WEBS), listed
    assert pings(layout, "web1", [got[vm] for vm in WEBS[1:]])
    blue_macs = {n["mac"] for v in made for n in v["nics"]}
    red_mac = red["nics"][0]["mac"]
    assert [f for f in frames if "vlan 10," in f or any(m in f for m in blue_macs)] == []
    red_frames = [f for f in frames if "vlan 20," in f and f"Request from {red_mac}" in f]
    assert red_frames, frames[-5:]
    assert [f for f in frames if "vlan 20," in f and "Reply" in f], frames[-5:]
    # The uplink server: red's lease is its, and it never heard a blue VM.
    assert IPv4Address("10.20.0.10") <= IPv4Address(red_ip) <= IPv4Address("10.20.0.19")
    assert {"mac": red_mac.lower(), "ip": red_ip} in [{k: x[k] for k in ("mac", "ip")}
                                               for x in uplinkdhcp.leases(NAME)]
    heard = uplinkdhcp.log_text(NAME).lower()
    assert red_mac.lower() in heard and not [m for m in blue_macs if m.lower() in heard]
    print(f"\ntipam: deploy of 5 {deploy_s:.1f} s, all 5 leased {leases_s:.1f} s after "
          f"it began; capture {len(frames)} DHCP frames: {len(red_frames)} red, 0 blue; "
          f"red leased {red_ip} from the uplink server")
    ok("vm", "delete", "redvm", "--force")


def test_a_guest_that_spoofs_its_address_or_mac_is_cut_off_alone(ipamlab):
    layout, _, _ = ipamlab
    alloc = allocations()
    me, peers = "web1", [alloc[vm] for vm in WEBS[1:]]
    mac = console(layout, me, "cat /sys/class/net/eth0/address")[1].splitlines()[-1].strip()
    spoofs = {"address": ("ip -4 addr flush dev eth0; ip addr add 10.10.0.77/24 dev eth0",
                          f"ip -4 addr flush dev eth0; ip addr add {alloc[me]}/24 dev eth0"),
              "mac": ("ip link set eth0 down; ip link set eth0 address 52:54:00:ee:ee:01;"
                      " ip link set eth0 up",
                      f"ip link set eth0 down; ip link set eth0 address {mac}; "
                      "ip link set eth0 up")}
    for what, (spoof, restore) in spoofs.items():
        assert console(layout, me, spoof)[0] == 0
        assert not pings(layout, me, peers[:1]), f"{me} still reaches a peer ({what})"
        assert pings(layout, "web2", [alloc["web3"]]), f"peers cut off too ({what})"
        assert console(layout, me, restore)[0] == 0
        assert wait_for(lambda: pings(layout, me, peers), 30, 1), f"not back ({what})"


def test_a_migrated_vm_renews_the_same_address(ipamlab):
    layout, coord, _ = ipamlab
    alloc = allocations()
    lead = json.loads(coord.get(LEADER_KEY).value)["name"]
    # To the leader's host: the last test powers that host off with this VM on it.
    vm = next(v for v in WEBS[1:] if host_of(layout, v) != lead)
    t0 = time.monotonic()
    ok("vm", "migrate", vm, "--to", lead)
    migrate_s = time.monotonic() - t0
    assert host_of(layout, vm) == lead
    rc, out = console(layout, vm, "rm -f /run/ahvlite-dhcp-event; "
                      "kill -USR1 $(pidof udhcpc); for i in $(seq 40); do "
                      "[ -s /run/ahvlite-dhcp-event ] && break; usleep 250000; done; "
                      "cat /run/ahvlite-dhcp-event", timeout_s=30)
    assert rc == 0 and out.splitlines()[-1].split() == ["renew", alloc[vm]], out
    assert pings(layout, vm, [alloc[v] for v in WEBS if v != vm])
    print(f"\ntipam: {vm} migrated to {lead} in {migrate_s:.1f} s, renewed {alloc[vm]}")


def volumes(layout: LabLayout) -> list[str]:
    return sorted(p.name for p in layout.shared_dir.glob("vm-*"))


def refused(rc: int, *argv: str) -> str:
    r = cli(*argv)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == rc and len(errors) == 1 and "Traceback" not in r.stderr, \
        r.stdout + r.stderr
    return errors[0]


def test_bad_requests_give_one_line_and_create_nothing(ipamlab):
    layout, _, _ = ipamlab
    alloc, before, vms = allocations(), volumes(layout), ok("vm", "list")
    # A pool with 3 free addresses left, for a deploy of 5.
    ips = sorted(IPv4Address(ip) for ip in alloc.values())
    free = [ip for ip in (IPv4Address("10.10.0.100") + i for i in range(100))
            if ip not in ips][:3]
    ok("net", "update", "blue", "--pool", f"10.10.0.100-{free[-1]}")
    try:
        line = refused(4, "template", "deploy", "tp", "--count", "5", "--prefix", "full")
        assert "blue" in line and "no free address" in line, line
    finally:
        ok("net", "update", "blue", "--pool", "10.10.0.100-10.10.0.199")
    vm = ("vm", "create", "bad", "--memory-mib", "128", "--disk", "guest", "--nic")
    for rc, ip in ((2, "10.99.0.5"), (2, "10.10.0.1"), (4, alloc["web2"])):
        line = refused(rc, *vm, f"blue:ip={ip}")
        assert ip in line and "blue" in line, line
    assert "web2" in line  # who holds it
    assert (allocations(), volumes(layout), ok("vm", "list")) == (alloc, before, vms)


def test_dhcp_answers_without_the_leaders_host_and_ha_keeps_the_address(ipamlab):
    layout, coord, _ = ipamlab
    alloc = allocations()
    lead = json.loads(coord.get(LEADER_KEY).value)["name"]
    gone = sorted(vm for vm in WEBS if vm in running_on(layout, lead))
    assert gone, f"no web VM on the leader's host {lead}"
    x = next(vm for vm in WEBS if vm not in gone)
    with Placements(layout) as watch:
        t0 = time.monotonic()
        faults.kill(NAME, lead)
        # Power loss ends the host's dnsmasq too (it lives in a namespace nested in the
        # host's: only the host's mount namespace finds it).
        assert processes.pids_in_mntns(layout.host(lead).mnt_ns_file) == []
        # Power-cycle x through its own host's libvirt: no leader, no task involved.
        with connection(layout.libvirt_uri(layout.host(host_of(layout, x)))) as conn:
            dom = guest.lookup(conn, x).dom
            dom.destroy()
            dom.create()
        assert leased(layout, x) == alloc[x]
        x_s = time.monotonic() - t0
        back = wait_for(lambda: all(any(vm in running_on(layout, h.name)
                                        for h in layout.hosts if h.name != lead)
                                    for vm in gone), 240, 0.5)
        assert back, f"HA did not restart {gone}"
        ha_s = time.monotonic() - t0
        for vm in gone:
            assert leased(layout, vm) == alloc[vm]
        lease_s = time.monotonic() - t0
        assert pings(layout, x, [alloc[vm] for vm in gone])
    assert watch.twins() == []
    print(f"\ntipam: {lead} (leader) off; {x} restarted elsewhere leased {alloc[x]} after "
          f"{x_s:.1f} s; HA restarted {gone} after {ha_s:.1f} s, leased the same "
          f"addresses {lease_s:.1f} s after the power cut")
