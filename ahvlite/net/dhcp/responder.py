"""One dnsmasq per managed network on this host, in its own network namespace.

The namespace (``ahvd-br0-10``) keeps the subnets of different networks and the
host's management network apart: the host gets no route into a VM subnet. dnsmasq
listens on the inner end of a veth whose outer end is a br0 port on the dead VLAN,
reached only through the flows of ``plan.flow_table``.

dnsmasq daemonizes and is known by its pid file; before it is signalled, its
``/proc/PID/cmdline`` must name our config, so a recycled PID is never hit. It is
never looked for by name. Hosts and options are reloaded by SIGHUP; a config change
(subnet, server) restarts it.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

from ovsdbapp.schema.open_vswitch import impl_idl

from ahvlite.errors import MissingDependency, OperationFailed, OperationTimeout
from ahvlite.net import netlink
from ahvlite.net.dhcp.plan import DEAD_VLAN, DNSMASQ_USER, Responder, ResponderPlace
from ahvlite.net.ovs import ops

DNSMASQ = "dnsmasq"
ROLE = {"ahvlite-role": "dhcp"}
START_TIMEOUT_S = 10


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT_S,
                              check=False)
    except FileNotFoundError:
        raise MissingDependency(f"{argv[0]} is not installed",
                                hint="install the Debian packages dnsmasq-base, ethtool "
                                     "and util-linux") from None
    except subprocess.TimeoutExpired:
        raise OperationTimeout(f"{' '.join(argv)} did not finish in "
                               f"{START_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise OperationFailed(f"{' '.join(argv)}: "
                              f"{done.stderr.strip() or f'exit {done.returncode}'}")


def _in_netns(ns: str | None, argv: list[str]) -> list[str]:
    # nsenter (not `ip netns exec`) keeps the host's mount namespace: /run and /var/lib
    # stay the host's own.
    return ["nsenter", f"--net={netlink.netns_path(ns)}", *argv] if ns else argv


def _tx_off(dev: str, ns: str | None) -> None:
    # OVS's userspace datapath does not fill in checksums left to offload: without
    # this, dnsmasq's UDP replies arrive with bad checksums and are dropped.
    _run(_in_netns(ns, ["ethtool", "-K", dev, "tx", "off"]))


def _write(path: Path, text: str) -> bool:
    """Write ``text`` (0644, tmp + rename) unless it is already there; True if written."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)  # dnsmasq re-reads hosts/opts after dropping to its own user
    os.replace(tmp, path)
    return True


def _prepare_log(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    path.touch(mode=0o644, exist_ok=True)
    try:
        user = pwd.getpwnam(DNSMASQ_USER)
    except KeyError:
        return  # dnsmasq will say so itself, naming the user
    os.chown(path, user.pw_uid, user.pw_gid)


# -- the dnsmasq process -------------------------------------------------------------

def running_pid(at: ResponderPlace) -> int | None:
    """The PID of the dnsmasq at ``at``, if its pid file names a live dnsmasq using our
    config."""
    try:
        pid = int(at.pid_path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _is_ours(pid, at.conf_path) else None


def _is_ours(pid: int, conf: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return (state != "Z" and Path(argv[0].decode(errors="replace")).name == DNSMASQ
            and f"--conf-file={conf}".encode() in argv)


def _started_path(at: ResponderPlace) -> Path:
    return at.conf_path.with_name("started")


def _start_record(r: Responder) -> str:
    """What a running dnsmasq depends on and never re-reads: its config, and the
    interface (by index: a re-made veth is a new one) and address it bound to."""
    idx = netlink.link_index(r.place.ns_veth, ns=r.place.netns)
    return f"{r.conf}# {r.place.ns_veth} ifindex {idx} address {r.address}\n"


def _start(r: Responder) -> int:
    at = r.place
    at.pid_path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    at.pid_path.unlink(missing_ok=True)
    _started_path(at).unlink(missing_ok=True)
    _prepare_log(at.log_path)
    # dnsmasq's parent returns once the daemon has bound its socket (or failed).
    _run(_in_netns(at.netns, [DNSMASQ, f"--conf-file={at.conf_path}"]))
    deadline = time.monotonic() + START_TIMEOUT_S
    while (pid := running_pid(at)) is None:
        if time.monotonic() > deadline:
            raise OperationFailed(f"dnsmasq for {r.network} did not write {at.pid_path}",
                                  hint=f"see {at.log_path}")
        time.sleep(0.02)
    _write(_started_path(at), _start_record(r))
    return pid


def stop(at: ResponderPlace, *, timeout_s: float = 5) -> bool:
    """End the dnsmasq at ``at`` (by its recorded PID); False if none was running."""
    pid = running_pid(at)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _is_ours(pid, at.conf_path):
        if time.monotonic() > deadline:
            raise OperationTimeout(f"dnsmasq {pid} ({at.key}) did not end in "
                                   f"{timeout_s:.0f} s")
        time.sleep(0.02)
    at.pid_path.unlink(missing_ok=True)
    return True


# -- the whole responder -------------------------------------------------------------

def _plumb(api: impl_idl.OvsdbIdl, r: Responder, host_ns: str | None) -> None:
    """Namespace, veth (re-made if its far end is missing or has another MAC), the
    responder's address, and its port on the bridge."""
    at = r.place
    netlink.ensure_netns(at.netns)
    if (not netlink.link_exists(at.host_veth, ns=host_ns)
            or netlink.link_mac(at.ns_veth, ns=at.netns) != r.mac):
        # ovs-vswitchd keeps a vanished device's port open on the old one: the port
        # goes too, and is added back for the new veth below.
        ops.remove_port(api, bridge=at.bridge, name=at.host_veth)
        netlink.delete_link(at.host_veth, ns=host_ns)
        netlink.delete_link(at.ns_veth, ns=at.netns)
        netlink.create_veth_pair(at.host_veth, at.ns_veth, far_ns=at.netns, far_mac=r.mac,
                                 ns=host_ns)
        _tx_off(at.host_veth, host_ns)
        _tx_off(at.ns_veth, at.netns)
    netlink.set_only_address(at.ns_veth, str(r.address), ns=at.netns)
    ops.ensure_access_port(api, bridge=at.bridge, name=at.host_veth, tag=DEAD_VLAN,
                           external_ids={**ROLE, "ahvlite-network": r.network,
                                         "ahvlite-vlan": str(at.vlan)})


def ensure(api: impl_idl.OvsdbIdl, r: Responder, *, host_ns: str | None = None) -> str:
    """Make ``r`` run as planned; return what was done: started, restarted, reloaded
    or unchanged. ``host_ns`` is the namespace ovs-vswitchd runs in (None: ours).

    Safe to call again after any failure: whether dnsmasq must restart is decided from
    what it was started with (recorded), not from what this call changed.
    """
    at = r.place
    _plumb(api, r, host_ns)
    _write(at.conf_path, r.conf)
    data_changed = _write(at.hosts_path, r.hosts) | _write(at.opts_path, r.opts)
    pid = running_pid(at)
    if pid is None:
        _start(r)
        return "started"
    try:
        started_with = _started_path(at).read_text()
    except FileNotFoundError:
        started_with = None
    if started_with != _start_record(r):  # dnsmasq does not re-read its config on SIGHUP
        stop(at)
        _start(r)
        return "restarted"
    if data_changed:
        os.kill(pid, signal.SIGHUP)
        return "reloaded"
    return "unchanged"


def remove(api: impl_idl.OvsdbIdl, at: ResponderPlace, *, host_ns: str | None = None
           ) -> None:
    """Stop the dnsmasq at ``at`` and remove its port, veth, namespace and files."""
    stop(at)
    ops.remove_port(api, bridge=at.bridge, name=at.host_veth)
    netlink.delete_link(at.host_veth, ns=host_ns)
    netlink.delete_netns(at.netns)
    for path in (at.conf_path, at.hosts_path, at.opts_path, _started_path(at), at.pid_path):
        path.unlink(missing_ok=True)
    try:
        at.conf_path.parent.rmdir()
    except OSError:
        pass  # not empty (something else of ours lives there) or already gone
