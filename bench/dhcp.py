"""DHCP DISCOVER -> ACK on a managed network (answered on the VM's own host) against a
dnsmasq on the uplink (the site's own server, across the top-of-rack bridge), same run.

A 2-host lab (name ``bdhcp``): ``blue`` (VLAN 10) is managed, ``red`` (VLAN 20) is not
and is served by the lab's uplink DHCP server (ahvlite/lab/uplinkdhcp.py, dynamic
range). One guest on each. Once both hold their first lease, each guest runs N one-shot
``udhcpc -n -q`` (a full DISCOVER, OFFER, REQUEST, ACK each) from its console; tcpdump
on the guest's tap port, inside its host's network namespace, records the exchange, and
each exchange is timed by packet timestamps from its DISCOVER to the ACK of the same
xid (no console or wall-clock time in it). TCG guests: the guest's own part of the
exchange (OFFER -> REQUEST) counts in both figures alike, so the server's share
(DISCOVER -> OFFER plus REQUEST -> ACK) is printed beside it.

Knob: AHVLITE_BENCH_DHCP_ROUNDS (exchanges per guest, default 20).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from ahvlite.controller.daemon import LEADER_KEY
from ahvlite.lab import guests, lab, uplinkdhcp
from ahvlite.lab.drills import running_on
from ahvlite.lab.layout import LabLayout
from ahvlite.lab.services import open_lab_store
from ahvlite.spec.lab import LabSpec
from ahvlite.virt import guest
from ahvlite.virt.conn import local_socket_connection
from bench.labapi import ahv, ok
from bench.waiting import until

NAME = "bdhcp"
SUBNET = ipaddress.IPv4Network("10.213.233.0/26")
BLUE = ("--vlan", "10", "--subnet", "10.10.0.0/24", "--gateway", "10.10.0.1",
        "--pool", "10.10.0.100-10.10.0.199")
XID = re.compile(r"xid (0x[0-9a-f]+)")
MESSAGE = re.compile(r"DHCP-Message \(53\), length 1: (\w+)")


def _firsts(text: str) -> dict[str, dict[str, float]]:
    """xid -> message type -> its first capture time, from the output of
    ``tcpdump -nn -tt -v`` (one packet per unindented line and its indented ones)."""
    packets: list[list[str]] = []
    for line in text.splitlines():
        if line[:1].isdigit():
            packets.append([line])
        elif packets:
            packets[-1].append(line)
    seen: dict[str, dict[str, float]] = {}
    for lines in packets:
        body = "\n".join(lines)
        xid, kind = XID.search(body), MESSAGE.search(body)
        if xid and kind:
            seen.setdefault(xid.group(1), {}).setdefault(kind.group(1),
                                                         float(lines[0].split()[0]))
    return seen


def exchanges(text: str) -> list[float]:
    """Seconds from each DISCOVER to the ACK of the same xid (from its first DISCOVER,
    so a retransmission counts)."""
    return [t["ACK"] - t["Discover"] for t in _firsts(text).values()
            if "Discover" in t and "ACK" in t]


def server_shares(text: str) -> list[float]:
    """The server's part of each full exchange: DISCOVER -> OFFER plus REQUEST -> ACK
    (what is left of DISCOVER -> ACK is the guest's own: OFFER -> REQUEST)."""
    kinds = ("Discover", "Offer", "Request", "ACK")
    return [(t["Offer"] - t["Discover"]) + (t["ACK"] - t["Request"])
            for t in _firsts(text).values() if all(k in t for k in kinds)]


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _ms(values: list[float], p: float) -> str:
    return f"{_pct(values, p) * 1000:6.1f} ms"


def _host_of(layout: LabLayout, vm: str) -> str:
    return str(until(lambda: next((h.name for h in layout.hosts
                                    if vm in running_on(layout, h.name)), None), 60,
                      f"{vm} is not running"))


def _console(layout: LabLayout, vm: str, host: str, command: str,
             timeout_s: float = 30) -> tuple[int, str]:
    return guests.console_run(layout, guests.LabGuest(vm, host, "", "", "", ""), command,
                              timeout_s=timeout_s)


def _leased(layout: LabLayout, vm: str, host: str) -> str:
    def lease() -> str | None:
        try:
            rc, out = _console(layout, vm, host, "cat /run/ahvlite-dhcp-lease", 10)
        except Exception:
            return None  # still booting: its console does not answer yet
        return out.splitlines()[-1].split()[0] if rc == 0 and out.strip() else None
    return str(until(lease, 300, f"{vm} got no first lease"))


def _tap(layout: LabLayout, vm: str, host: str) -> str:
    with local_socket_connection(layout.host(host).libvirt_sock) as conn:
        xml = guest.lookup(conn, vm).xml()
    target = ET.fromstring(xml).find("./devices/interface/target")
    if target is None:
        raise RuntimeError(f"{vm} has no tap device")
    return target.attrib["dev"]


def measure(layout: LabLayout, vm: str, rounds: int,
            work: Path) -> tuple[list[float], list[float]]:
    """``rounds`` one-shot exchanges of ``vm``, timed from a capture on its tap:
    (DISCOVER -> ACK, the server's share of it) per exchange."""
    host = _host_of(layout, vm)
    tap, netns = _tap(layout, vm, host), layout.host(host).netns
    out_file, err = work / f"{vm}.txt", work / f"{vm}.err"
    # Decoded at once (-v, each packet's capture time -tt): a -w file on a port of the
    # userspace datapath was seen empty of DHCP while the decoded output had it all.
    dump = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{netns}", "tcpdump", "-i", tap, "-l", "-nn", "-tt",
         "-v", "udp port 67 or udp port 68"],
        stdout=out_file.open("w"), stderr=err.open("w"))
    try:
        until(lambda: "listening on" in err.read_text(), 10, "tcpdump did not start")
        # A script that applies nothing: the guest keeps the lease it has.
        _console(layout, vm, host, r"printf '#!/bin/sh\nexit 0\n' > /run/noop; "
                 "chmod +x /run/noop")
        rc, out = _console(layout, vm, host, (
            f"n=0; for i in $(seq {rounds}); do udhcpc -n -q -i eth0 -s /run/noop -t 3 "
            "-T 2 -A 1 -O mtu > /dev/null 2>&1 && n=$((n + 1)); usleep 100000; done; "
            "echo dhcp-ok=$n"), timeout_s=30 + 10 * rounds)
        done = re.search(r"dhcp-ok=(\d+)", out)
        if rc != 0 or not done or int(done.group(1)) != rounds:
            raise RuntimeError(f"{vm}: not every udhcpc got a lease: {out[-300:]}")
        time.sleep(0.5)  # the last ACK into the output
    finally:
        os.kill(dump.pid, signal.SIGINT)
        dump.wait(10)
    text = out_file.read_text()
    got, shares = exchanges(text), server_shares(text)
    if len(got) != rounds or len(shares) != rounds:
        raise RuntimeError(f"{vm}: {len(got)} DISCOVER -> ACK exchanges in the capture "
                           f"({len(shares)} with all four messages), not {rounds}")
    return got, shares


def main() -> None:
    rounds = int(os.environ.get("AHVLITE_BENCH_DHCP_ROUNDS", "20"))
    status = lab.up(LabSpec(name=NAME, hosts=2, subnet=SUBNET))
    try:
        layout = lab.layout_of(NAME)
        coord = open_lab_store(layout)
        try:
            until(lambda: coord.get(LEADER_KEY), 60, "no leader")
        finally:
            coord.close()
        ok(ahv(NAME, "image", "import", status["guest"]["disk"], "guest", "--json"))
        ok(ahv(NAME, "net", "create", "blue", *BLUE, "--json"))
        ok(ahv(NAME, "net", "create", "red", "--vlan", "20", "--json"))
        uplinkdhcp.start(NAME)
        for vm, net in (("dm", "blue"), ("du", "red")):
            ok(ahv(NAME, "vm", "create", vm, "--memory-mib", "128", "--disk", "guest",
                   "--nic", net, "--start", "--json"))
        where = {vm: _host_of(layout, vm) for vm in ("dm", "du")}
        first = {vm: _leased(layout, vm, where[vm]) for vm in ("dm", "du")}
        with tempfile.TemporaryDirectory(prefix="ahvlite-bench-dhcp-") as tmp:
            managed = measure(layout, "dm", rounds, Path(tmp))
            uplink = measure(layout, "du", rounds, Path(tmp))
        print(f"DHCP DISCOVER -> ACK, 2-host lab, TCG guests, {rounds} one-shot udhcpc "
              "each, timed on the guest's tap (packet timestamps):")
        for label, (got, share), vm in (
                ("managed (answered on the VM's host)", managed, "dm"),
                ("uplink dnsmasq (across the rack)   ", uplink, "du")):
            print(f"  {label}: p50 {_ms(got, 50)}, p95 {_ms(got, 95)}, max "
                  f"{max(got) * 1000:6.1f} ms; server's share p50 {_ms(share, 50)}, p95 "
                  f"{_ms(share, 95)} ({len(got)} exchanges; {vm} on {where[vm]}, "
                  f"{first[vm]})")
        print("  ratio managed/uplink: DISCOVER -> ACK p50 "
              f"{_pct(managed[0], 50) / _pct(uplink[0], 50):.2f}, p95 "
              f"{_pct(managed[0], 95) / _pct(uplink[0], 95):.2f}; server's share p50 "
              f"{_pct(managed[1], 50) / _pct(uplink[1], 50):.2f}, p95 "
              f"{_pct(managed[1], 95) / _pct(uplink[1], 95):.2f}")
    finally:
        lab.down(NAME)


if __name__ == "__main__":
    main()
