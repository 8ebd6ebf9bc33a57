"""Lab wiring through our netlink layer vs. the same steps with iproute2 commands.

Both sides create a namespace, N veth pairs into it enslaved to a bridge, bring them up,
then remove everything. The ratio (iproute2 time / ahvlite time) is what to watch:
above 1 means our pyroute2 path is faster than shelling out to ``ip``.
"""

from __future__ import annotations

import statistics
import subprocess
import time

from ahvlite.net import netlink

PAIRS = 8
ROUNDS = 5


def _ours(tag: str) -> None:
    ns, br = f"ahvb-{tag}", f"ahvb{tag}br"
    netlink.create_netns(ns)
    netlink.create_bridge(br)
    for i in range(PAIRS):
        netlink.create_veth_into(f"ahvb{tag}{i}", f"eth{i}", ns, bridge=br)
        netlink.set_link_up(f"eth{i}", ns=ns)
    for i in range(PAIRS):
        netlink.delete_link(f"ahvb{tag}{i}")
    netlink.delete_link(br)
    netlink.delete_netns(ns)


def _iproute2(tag: str) -> None:
    ns, br = f"ahvb-{tag}", f"ahvb{tag}br"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("ip", "netns", "add", ns)
    run("ip", "link", "add", br, "type", "bridge")
    for i in range(PAIRS):
        run("ip", "link", "add", f"ahvb{tag}{i}", "type", "veth", "peer", "name", f"eth{i}",
            "netns", ns)
        run("ip", "link", "set", f"ahvb{tag}{i}", "master", br, "up")
        run("ip", "-n", ns, "link", "set", f"eth{i}", "up")
    for i in range(PAIRS):
        run("ip", "link", "del", f"ahvb{tag}{i}")
    run("ip", "link", "del", br)
    run("ip", "netns", "del", ns)


def _time(fn, tag: str) -> float:
    t0 = time.perf_counter()
    fn(tag)
    return time.perf_counter() - t0


def main() -> None:
    ours, peer = [], []
    for r in range(ROUNDS):
        # Alternate the order so neither side always runs on a warmer machine.
        if r % 2:
            peer.append(_time(_iproute2, "p"))
            ours.append(_time(_ours, "o"))
        else:
            ours.append(_time(_ours, "o"))
            peer.append(_time(_iproute2, "p"))
    o, p = statistics.median(ours), statistics.median(peer)
    print(f"lab wiring, {PAIRS} veth pairs + bridge + netns, median of {ROUNDS}:")
    print(f"  ahvlite netlink (pyroute2): {o * 1000:8.1f} ms")
    print(f"  iproute2 commands (peer):   {p * 1000:8.1f} ms")
    print(f"  ratio peer/ours: {p / o:.2f}")


if __name__ == "__main__":
    main()
