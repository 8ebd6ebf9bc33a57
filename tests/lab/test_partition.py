"""`lab partition` splits hosts off as groups that still reach themselves; `lab heal`
puts them back; `lab down` leaves no segment behind. One 4-host lab, no ZooKeeper."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from ahvlite.lab import faults, lab
from ahvlite.lab.layout import segment_name
from ahvlite.net import netlink
from ahvlite.spec.lab import LabSpec
from tests.clirun import ahvlite

from .conftest import assert_gone, in_host, lab_leftovers

NAME = "tpart"
SUBNET = "10.213.244.0/26"
ROOT = "root"  # the root namespace, as a ping source


@pytest.fixture(scope="module")
def layout():
    lab.up(LabSpec(name=NAME, hosts=4, subnet=SUBNET))
    try:
        yield lab.layout_of(NAME)
    finally:
        if lab.lab_root(NAME).exists() or lab_leftovers(NAME)["links"]:
            lab.down(NAME)


def lab_cmd(*args: str) -> subprocess.CompletedProcess:
    """``ahvlite lab ARGS`` on this module's lab, answered in JSON."""
    return ahvlite("lab", *args, "--name", NAME, "--json", timeout_s=60)


def _reaches(layout, src: str, dst: str) -> bool:
    ping = ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-q", layout.host(dst).ip]
    if src == ROOT:
        # The lab put its subnet on its bridge: a lab address never routes off the box.
        assert netlink.route_device(layout.host(dst).ip) == layout.bridge
        return subprocess.run(ping, capture_output=True, timeout=30).returncode == 0
    return in_host(layout.host(src), *ping).returncode == 0


def _matrix(layout, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
    with ThreadPoolExecutor(len(pairs)) as pool:
        results = pool.map(lambda p: _reaches(layout, *p), pairs)
        return dict(zip(pairs, results, strict=True))


def _segments(layout) -> dict[str, str | None]:
    return {h["name"]: h["segment"] for h in lab.status(NAME)["hosts"]}


def test_partition_groups_heal_and_down(layout):
    main = layout.bridge
    seg1, seg2 = segment_name(NAME, 1), segment_name(NAME, 2)
    everyone = [("h1", "h3"), ("h3", "h4"), ("h1", "h2"), (ROOT, "h3"), ("h4", "h2")]
    assert all(_matrix(layout, everyone).values())  # the checks below can fail

    # An unknown host: one clear error, nothing created.
    bad = lab_cmd("partition", "h3", "h9")
    assert bad.returncode == 2, bad.stderr
    assert "h9" in bad.stderr + bad.stdout
    veths = sorted(v for h in layout.hosts for v in h.veths)
    assert lab_leftovers(NAME)["links"] == [*veths, main]

    cut = lab_cmd("partition", "h3", "h4")
    assert cut.returncode == 0, cut.stderr
    assert json.loads(cut.stdout) == {
        "segment": seg1, "hosts": ["h3", "h4"], "removed_segments": [],
        "links": [*layout.host("h3").veths, *layout.host("h4").veths]}
    assert _segments(layout) == {"h1": main, "h2": main, "h3": seg1, "h4": seg1}
    assert _matrix(layout, [("h3", "h4"), ("h4", "h3"), ("h1", "h2"), ("h1", "h3"),
                            ("h4", "h2"), (ROOT, "h3"), (ROOT, "h1")]) == {
        ("h3", "h4"): True, ("h4", "h3"): True, ("h1", "h2"): True, ("h1", "h3"): False,
        ("h4", "h2"): False, (ROOT, "h3"): False, (ROOT, "h1"): True}
    # The segment bridge has no address at all (not even IPv6 link-local), and the
    # moved veths keep TX checksum offload off (the userspace datapath needs that).
    addrs = subprocess.run(["ip", "-j", "addr", "show", "dev", seg1], capture_output=True,
                           text=True, check=True)
    assert json.loads(addrs.stdout)[0]["addr_info"] == []
    for veth in layout.host("h3").veths:
        features = subprocess.run(["ethtool", "-k", veth], capture_output=True, text=True,
                                  check=True).stdout
        assert "tx-checksumming: off" in features

    # A second partition at once: h4 leaves h3's group for its own.
    assert faults.partition(NAME, "h4")["segment"] == seg2
    assert _segments(layout) == {"h1": main, "h2": main, "h3": seg1, "h4": seg2}
    assert _matrix(layout, [("h3", "h4"), ("h1", "h2"), ("h1", "h4")]) == {
        ("h3", "h4"): False, ("h1", "h2"): True, ("h1", "h4"): False}

    # Healing one host removes the segment it leaves empty and keeps the other.
    assert faults.heal(NAME, "h4")["removed_segments"] == [seg2]
    assert _matrix(layout, [("h1", "h4"), ("h4", "h3")]) == {
        ("h1", "h4"): True, ("h4", "h3"): False}

    healed = lab_cmd("heal")
    assert healed.returncode == 0, healed.stderr
    assert json.loads(healed.stdout)["removed_segments"] == [seg1]
    assert set(_segments(layout).values()) == {main}
    assert all(_matrix(layout, everyone).values())
    assert not netlink.links_with_prefix(f"s{NAME}-")

    # Down while partitioned: the segment goes with the lab.
    faults.partition(NAME, "h2")
    assert netlink.link_exists(seg1)
    pids = list(lab.state_of(NAME).processes)
    lab.down(NAME)
    assert_gone(NAME, pids)
