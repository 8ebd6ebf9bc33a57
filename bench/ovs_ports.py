"""br0 + bond + 20 VLAN VM ports: ahvlite (one OVSDB transaction) vs an ``ovs-vsctl`` loop.

Both sides run against the same throwaway ovsdb-server + ovs-vswitchd (userspace
datapath) in a private network namespace, on interfaces made there (dummy-free: OVS
internal ports stand in for taps, since the peer's commands are what we time). The
ratio (ovs-vsctl time / ahvlite time) is what to watch: above 1 means ahvlite is faster.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from ahvlite.net import netlink
from ahvlite.net.ovs.api import ovsdb
from ahvlite.net.ovs.ops import step_commands
from ahvlite.net.plan import AddBond, AddBridge, BondSettings
from ahvlite.spec.network import BondSpec

PORTS = 20
ROUNDS = 5
NS = "ahvb-ovsports"


def _ours(api) -> None:
    """Bridge, bond and every VM port (tag + external_ids) in ONE OVSDB transaction."""
    settings = BondSettings.from_spec(BondSpec(members=["up0", "up1"]))
    steps = [AddBridge("br0", "netdev"), AddBond("br0", "br0-up", ("up0", "up1"), settings)]
    with api.transaction(check_error=True) as txn:
        for step in steps:
            for command in step_commands(api, txn, step):
                txn.add(command)
        for i in range(PORTS):
            txn.add(api.add_port("br0", f"vm{i}", may_exist=True, type="internal",
                                 external_ids={"vm-id": f"vm-{i}",
                                               "attached-mac": f"52:54:00:00:00:{i:02x}"}))
            txn.add(api.db_set("Port", f"vm{i}", ("tag", 100 + i)))


def _peer(db: str) -> None:
    vsctl = ["ovs-vsctl", f"--db=unix:{db}"]
    run = lambda *a: subprocess.run([*vsctl, *a], check=True, capture_output=True)  # noqa: E731
    run("--may-exist", "add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev")
    run("--may-exist", "add-bond", "br0", "br0-up", "up0", "up1", "bond_mode=active-backup",
        "other_config:bond-detect-mode=carrier")
    for i in range(PORTS):
        run("--may-exist", "add-port", "br0", f"vm{i}", f"tag={100 + i}", "--", "set",
            "interface", f"vm{i}", "type=internal", f"external_ids:vm-id=vm-{i}",
            f"external_ids:attached-mac=52:54:00:00:00:{i:02x}")


def _reset(db: str) -> None:
    subprocess.run(["ovs-vsctl", f"--db=unix:{db}", "--if-exists", "del-br", "br0"],
                   check=True, capture_output=True)


def main() -> None:
    if shutil.which("ovsdb-server") is None:
        print("ovs ports: skipped (Open vSwitch not installed)")
        return
    tmp = Path(tempfile.mkdtemp(prefix="ahvb-ovs-"))
    db, sock = tmp / "conf.db", tmp / "db.sock"
    subprocess.run(["ovsdb-tool", "create", str(db),
                    "/usr/share/openvswitch/vswitch.ovsschema"], check=True)
    netlink.delete_netns(NS)
    netlink.create_netns(NS)
    for i in (0, 1):
        subprocess.run(["ip", "-n", NS, "link", "add", f"up{i}", "type", "veth", "peer", "name",
                        f"up{i}p"], check=True)
    enter = ["ip", "netns", "exec", NS]
    procs = [subprocess.Popen([*enter, "ovsdb-server", str(db), f"--remote=punix:{sock}",
                               f"--unixctl={tmp}/ovsdb.ctl", "--no-chdir"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        while not sock.exists():
            time.sleep(0.05)
        subprocess.run(["ovs-vsctl", f"--db=unix:{sock}", "--no-wait", "init"], check=True)
        procs.append(subprocess.Popen(
            [*enter, "ovs-vswitchd", f"unix:{sock}", f"--unixctl={tmp}/vswitchd.ctl",
             "--no-chdir", f"--log-file={tmp}/vswitchd.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ours, peer = [], []
        with ovsdb(f"unix:{sock}") as api:
            for r in range(ROUNDS):
                for side in (("o", "p") if r % 2 == 0 else ("p", "o")):
                    _reset(str(sock))
                    t0 = time.perf_counter()
                    if side == "o":
                        _ours(api)
                        ours.append(time.perf_counter() - t0)
                    else:
                        _peer(str(sock))
                        peer.append(time.perf_counter() - t0)
        o, p = statistics.median(ours), statistics.median(peer)
        print(f"ovs ports: br0 + bond + {PORTS} VLAN VM ports, median of {ROUNDS}:")
        print(f"  ahvlite (one ovsdbapp transaction):              {o * 1000:8.1f} ms")
        print(f"  ovs-vsctl loop (peer):                           {p * 1000:8.1f} ms")
        print(f"  ratio peer/ours: {p / o:.2f}")
    finally:
        for proc in reversed(procs):
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        netlink.delete_netns(NS)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
