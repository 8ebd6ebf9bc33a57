"""``ahvlite lab``: bring a multi-host lab up, report on it, and take it down.

Order matters for safety: the lab bridge and its on-link subnet exist, and the route
to every host address is checked to lead into that bridge, before any daemon listens
or anything connects to a lab address. Every object is recorded in the state file
before it is created, so ``down`` (or the next ``up``) removes exactly what was made.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ahvlite.clock import SYSTEM, wait_until
from ahvlite.errors import Conflict, NotFound, OperationFailed, OperationTimeout, UnsafeNetwork
from ahvlite.lab import hostconfig, namespaces, processes, segments, services
from ahvlite.lab.guest import GuestImages, build_guest
from ahvlite.lab.guests import GUEST_BASE
from ahvlite.lab.layout import (
    BOND,
    OVS_BRIDGE,
    SHARED_POOL,
    UPLINKS,
    VIRBR0_ADDRESS,
    HostLayout,
    LabLayout,
    bridge_name,
    netns_prefix,
    plan_layout,
    segment_prefix,
    veth_prefix,
)
from ahvlite.lab.paths import cache_dir, lab_root, labs_dir
from ahvlite.lab.pki import LabCA, allowed_dns, install_client_pki, install_host_pki
from ahvlite.lab.prereqs import check_lab_prerequisites, find_program
from ahvlite.lab.sshkeys import known_hosts_line, make_keypair
from ahvlite.lab.state import LabState, ProcessRecord
from ahvlite.net import netlink
from ahvlite.net.ovs import ops as ovs_ops
from ahvlite.net.ovs.api import ovsdb
from ahvlite.pki import ADMINS_UNIT
from ahvlite.spec.cluster import ClusterSpec, HostSpec, SshSpec
from ahvlite.spec.lab import LabSpec
from ahvlite.spec.labels import DOMAIN_TYPE_LABEL
from ahvlite.spec.network import BondSpec, BridgeSpec, NetworkSpec, OvsdbSpec
from ahvlite.spec.storage import PoolSpec
from ahvlite.virt import storage
from ahvlite.virt.conn import connection, local_socket_connection

Report = Callable[[str], None]

# ovsdb-server's TLS port on each host's management address (OVS's IANA port).
OVSDB_TLS_PORT = 6640
# Daemons of a host in start order; ``down`` stops them in reverse.
DAEMONS = ("ovsdb-server", "ovs-vswitchd", "virtlogd", "virtlockd", "libvirtd", "sshd")
# Roles stopped with SIGKILL at once: tgtd ignores SIGTERM, and a drill wants it dead.
KILLED_AT_ONCE = ("storage",)


def _quiet(_: str) -> None:
    pass


# -- up -----------------------------------------------------------------------

def up(spec: LabSpec, *, report: Report = _quiet) -> dict[str, Any]:
    """Build the lab described by ``spec``; return its status."""
    started = SYSTEM.monotonic()
    check_lab_prerequisites()
    root = lab_root(spec.name)
    layout = plan_layout(spec, root)
    _refuse_running(layout)
    _refuse_overlap_with_other_labs(layout)
    previous = LabState.load(layout.state_file)
    if previous is not None or _leftovers(spec.name):
        report("clearing leftovers of an earlier run")
        teardown(spec.name, keep=False)
    overlaps = netlink.overlapping_networks(layout.subnet)
    if overlaps:
        where = ", ".join(f"{net} on {dev}" for net, dev in overlaps)
        raise UnsafeNetwork(
            f"subnet {layout.subnet} is already in use on this machine ({where})",
            hint="choose another with --subnet")

    report("building the test guest (cached after the first run)")
    images = build_guest(cache_dir() / "guest")

    state = LabState(name=spec.name, subnet=str(layout.subnet), hosts=spec.hosts,
                     storage=spec.storage)
    root.mkdir(parents=True, exist_ok=True)
    state.save(layout.state_file)
    try:
        _build(layout, state, images, report)
        if spec.storage == "iscsi":
            from ahvlite.lab import iscsi

            iscsi.start_storage(layout, report=report, start=lambda host, role, argv: _start(
                state, layout, host, role, argv))
        url = services.start_lab_services(
            layout, zk=spec.zk or spec.controllers, controllers=spec.controllers,
            report=report,
            start=lambda host, role, argv: _start(state, layout, host, role, argv))
        if spec.controllers and url is not None:
            report("the cluster into the store; waiting for every controller's API")
            _bootstrap_cluster(layout, url)
    except BaseException:
        # Nothing half-created stays behind: a failed up removes what it made, but
        # keeps the logs, which say why.
        state.save(layout.state_file)
        report("lab up failed; removing what it created")
        teardown(spec.name, keep=True)
        raise
    state.timings_s["lab_up"] = round(SYSTEM.monotonic() - started, 2)
    state.phase = "up"
    state.save(layout.state_file)
    return status(spec.name)


def _build(layout: LabLayout, state: LabState, images: GuestImages, report: Report) -> None:
    t0 = SYSTEM.monotonic()
    save = lambda: state.save(layout.state_file)  # noqa: E731 - recorded before each step

    report(f"wiring lab bridge {layout.bridge} with {layout.gateway}")
    state.mounts.append(str(layout.ns_dir))
    save()
    if not namespaces.make_private_dir(layout.ns_dir):
        state.mounts.remove(str(layout.ns_dir))
    state.bridge = layout.bridge
    save()
    netlink.create_bridge(layout.bridge)
    netlink.add_address(layout.bridge, str(layout.gateway))
    netlink.set_link_up(layout.bridge)
    _check_on_link(layout)

    report("creating the lab CA, certificates and SSH keys")
    ca = LabCA.create(layout.name)
    ca.save(layout.pki_dir / "ca")
    install_client_pki(ca, layout.client_pki_dir, name=admin_name(layout))
    services.write_lab_store_credentials(layout, ca)
    _install_admin(ca, layout)
    layout.ssh_dir.mkdir(parents=True, exist_ok=True)
    user_key = make_keypair(layout.ssh_key, f"ahvlite-lab-{layout.name}")
    (layout.ssh_dir / "authorized_keys").write_text(user_key + "\n")
    layout.shared_dir.mkdir(parents=True, exist_ok=True)
    layout.lockspace_dir.mkdir(parents=True, exist_ok=True)
    known_hosts = []

    for host in layout.hosts:
        report(f"{host.name}: namespaces, uplinks and configuration")
        state.netns.append(host.netns)
        state.links.extend(host.veths)
        state.mounts.extend([str(host.mnt_ns_file), str(host.uts_ns_file)])
        save()
        netlink.create_netns(host.netns)
        netlink.set_link_up("lo", ns=host.netns)
        for root_end, ns_end in zip(host.veths, UPLINKS, strict=True):
            netlink.create_veth_into(root_end, ns_end, host.netns, bridge=layout.bridge)
            _ethtool_tx_off(root_end)
        namespaces.create_host_namespaces(
            netns=host.netns, mnt_file=host.mnt_ns_file, uts_file=host.uts_ns_file,
            state_dir=host.state_dir, hostname=host.hostname, shared=(layout.shared_dir,))
        _write_host_files(layout, host, ca)
        host_pub = (host.state_dir / "etc/ssh/ssh_host_ed25519_key.pub").read_text().strip()
        known_hosts.append(known_hosts_line(host.ip, host_pub))
    layout.known_hosts.write_text("\n".join(known_hosts) + "\n")
    for host in layout.hosts:
        _host_copies(layout, host, ca)
    state.timings_s["wiring"] = round(SYSTEM.monotonic() - t0, 2)

    report("starting OVS on every host")
    for host in layout.hosts:
        _start(state, layout, host, "ovsdb-server", [
            "ovsdb-server", "/etc/openvswitch/conf.db",
            "--remote=punix:/run/openvswitch/db.sock",
            # `ahvlite net` connects through Manager rows: pssl on the management
            # address only (added once that address exists), mutual TLS with the lab
            # CA; the server certificate is the host's libvirt one (same CA and SAN).
            "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
            "--private-key=/etc/pki/libvirt/private/serverkey.pem",
            "--certificate=/etc/pki/libvirt/servercert.pem",
            "--ca-cert=/etc/pki/CA/cacert.pem",
            "--unixctl=/run/openvswitch/ovsdb-server.ctl",
            "--pidfile=/run/openvswitch/ovsdb-server.pid",
            "--log-file=/var/log/openvswitch/ovsdb-server.log"])
    for host in layout.hosts:
        _wait_for_path(host.ovsdb_sock, f"{host.name} ovsdb-server")
        namespaces.run(["ovs-vsctl", f"--db=unix:{host.ovsdb_sock}", "--no-wait", "init"])
        _start(state, layout, host, "ovs-vswitchd", [
            "ovs-vswitchd", "unix:/run/openvswitch/db.sock",
            "--pidfile=/run/openvswitch/ovs-vswitchd.pid",
            "--log-file=/var/log/openvswitch/ovs-vswitchd.log"])
    for host in layout.hosts:
        report(f"{host.name}: {OVS_BRIDGE} with bond {BOND} ({' + '.join(UPLINKS)})")
        with ovsdb(f"unix:{host.ovsdb_sock}") as api:
            ovs_ops.ensure_bridge_with_bond(
                api, bridge=OVS_BRIDGE, bond=BOND, members=list(UPLINKS),
                bond_mode="active-backup", datapath_type="netdev")
        netlink.wait_for_link(OVS_BRIDGE, ns=host.netns)
        for dev in (*UPLINKS, OVS_BRIDGE):
            netlink.set_link_up(dev, ns=host.netns)
            _ethtool_tx_off(dev, host=host)
        netlink.add_address(OVS_BRIDGE, str(host.address), ns=host.netns)
        with ovsdb(f"unix:{host.ovsdb_sock}") as api:
            ovs_ops.ensure_manager(api, f"pssl:{OVSDB_TLS_PORT}:{host.ip}")
        netlink.create_bridge("virbr0", ns=host.netns)
        netlink.add_address("virbr0", VIRBR0_ADDRESS, ns=host.netns)
        netlink.set_link_up("virbr0", ns=host.netns)
    state.timings_s["ovs"] = round(SYSTEM.monotonic() - t0, 2)

    report("starting libvirt and sshd on every host")
    for host in layout.hosts:
        _start(state, layout, host, "virtlogd", ["virtlogd"])
        _start(state, layout, host, "virtlockd", ["virtlockd"])
        _start(state, layout, host, "libvirtd", ["libvirtd", "--listen"])
        _start(state, layout, host, "sshd", [find_program("sshd") or "/usr/sbin/sshd", "-D",
                                             "-e", "-f", "/etc/ssh/sshd_config"])
    for host in layout.hosts:
        _wait_for_tls(layout, state, host)
    state.timings_s["daemons"] = round(SYSTEM.monotonic() - t0, 2)

    report(f"shared storage pool {SHARED_POOL} on every host")
    base = layout.shared_dir / GUEST_BASE
    if not base.exists():
        shutil.copyfile(images.disk, base)
    for host in layout.hosts:
        with connection(layout.libvirt_uri(host)) as conn:
            storage.ensure_dir_pool(conn, SHARED_POOL, layout.shared_dir)

    report("probing whether KVM boots guests here")
    from ahvlite.lab.probe import probe_domain_type  # probe needs a running host

    state.domain_type, state.domain_type_reason = probe_domain_type(layout, images)
    state.timings_s["probe"] = round(SYSTEM.monotonic() - t0, 2)
    _write_cluster_file(layout, state.domain_type, state.storage)


def _refuse_running(layout: LabLayout) -> None:
    state = LabState.load(layout.state_file)
    if state is None or state.phase != "up":
        return
    if state.processes and all(processes.is_alive(p) for p in state.processes):
        raise Conflict(f"lab {layout.name!r} is already running",
                       hint=f"`ahvlite lab down --name {layout.name}` first, or pick "
                            "another --name")


def _refuse_overlap_with_other_labs(layout: LabLayout) -> None:
    if not labs_dir().exists():
        return
    for other_dir in labs_dir().iterdir():
        if other_dir.name == layout.name:
            continue
        other = LabState.load(other_dir / "state.json")
        if other and ipaddress.IPv4Network(other.subnet).overlaps(layout.subnet):
            raise Conflict(f"subnet {layout.subnet} overlaps lab {other.name!r} "
                           f"({other.subnet})", hint="choose another with --subnet")


def _check_on_link(layout: LabLayout) -> None:
    for host in layout.hosts:
        dev = netlink.route_device(host.ip)
        if dev != layout.bridge:
            raise UnsafeNetwork(
                f"{host.ip} routes via {dev}, not the lab bridge {layout.bridge}; "
                "refusing to start (lab traffic must never leave this machine)",
                hint="remove the more specific route that covers the lab subnet")


def _ethtool_tx_off(dev: str, host: HostLayout | None = None) -> None:
    # OVS's userspace datapath does not fill in checksums left to offload; without
    # this, TCP between namespaces silently stalls while ping still works.
    argv = ["ethtool", "-K", dev, "tx", "off"]
    if host is not None:
        argv = namespaces.enter_argv(host.netns, host.mnt_ns_file, host.uts_ns_file) + argv
    namespaces.run(argv)


def admin_name(layout: LabLayout) -> str:
    """Who the root namespace's client certificate names: the lab's admin."""
    return f"ahvlite-{layout.name}-client"


def _install_admin(ca: LabCA, layout: LabLayout) -> None:
    """The lab admin's API credentials (the root namespace is the admin's machine)."""
    from ahvlite.lab.pki import write_secret

    d = layout.admin_pki_dir
    d.mkdir(parents=True, exist_ok=True)
    admin = ca.issue("admin", server=False, client=True, unit=ADMINS_UNIT)
    (d / "ca.pem").write_bytes(ca.cert_pem)
    (d / "admin.pem").write_bytes(admin.cert_pem)
    write_secret(d / "admin-key.pem", admin.key_pem)


def _host_copies(layout: LabLayout, host: HostLayout, ca: LabCA) -> None:
    """Files the cluster spec names by path (libvirt's pkipath, OVSDB's certificates,
    the SSH key and known hosts) exist at the same path inside every host too, each
    host with its own: its private /var/lib/ahvlite hides the lab directory. So the
    spec reads the same on the admin's machine and on every controller, as paths under
    /etc would on real hosts."""
    # The host's own client identity (its libvirtd's, which every libvirtd admits), not
    # an admin's.
    install_client_pki(ca, services.inside(host, layout.client_pki_dir),
                       name=host.hostname, admin=False)
    ssh = services.inside(host, layout.ssh_dir)
    ssh.mkdir(parents=True, exist_ok=True)
    # authorized_keys: sshd in the host reads it at the path its sshd_config names.
    for name in ("id_ed25519", "known_hosts", "authorized_keys"):
        src = layout.ssh_dir / name
        if src.exists():
            (ssh / name).write_bytes(src.read_bytes())
            os.chmod(ssh / name, 0o600)


def _bootstrap_cluster(layout: LabLayout, url: str, timeout_s: float = 90) -> None:
    """The lab's cluster spec into its store (what `cluster apply` does), then wait
    until every controller's API answers."""
    from ahvlite.cluster.legacy import open_cluster_file
    from ahvlite.cluster.state import ClusterState

    spec = open_cluster_file(layout.cluster_file)
    coord = services.open_lab_store(layout)
    try:
        st = ClusterState(coord)
        st.write_spec(spec, st.spec_version())
    finally:
        coord.close()
    pending = {h.name: h for h in layout.hosts}

    def all_answer() -> bool:
        for name, h in list(pending.items()):
            if _api_answers(layout, h):
                del pending[name]
        return not pending

    if not wait_until(all_answer, timeout_s=timeout_s, interval_s=0.3):
        raise OperationTimeout(f"the API of {', '.join(pending)} did not answer in "
                               f"{timeout_s:.0f} s",
                               hint="see logs/controller.log in the host's state dir")


def _api_answers(layout: LabLayout, host: HostLayout) -> bool:
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(layout.admin_pki_dir / "ca.pem"))
    try:
        with urllib.request.urlopen(f"{services.api_url(host)}/v1/health", timeout=2,
                                    context=ctx) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def client_env(name: str) -> dict[str, str]:
    """The environment that points the CLI at lab ``name``'s API, as its admin."""
    layout, _ = _layout_for(name)
    d = layout.admin_pki_dir
    return {"AHVLITE_API": ",".join(services.api_url(h) for h in layout.hosts),
            "AHVLITE_CA": str(d / "ca.pem"), "AHVLITE_CERT": str(d / "admin.pem"),
            "AHVLITE_KEY": str(d / "admin-key.pem")}


def _write_host_files(layout: LabLayout, host: HostLayout, ca: LabCA) -> None:
    d = host.state_dir
    files = {
        "etc/libvirt/libvirtd.conf": hostconfig.libvirtd_conf(host, allowed_dns(
            ca, [h.hostname for h in layout.hosts], [admin_name(layout)])),
        "etc/libvirt/qemu.conf": hostconfig.qemu_conf(host),
        "etc/libvirt/qemu-lockd.conf": hostconfig.qemu_lockd_conf(layout.lockspace_dir),
        "etc/ssh/sshd_config": hostconfig.sshd_config(host, layout),
        "etc/hosts": hostconfig.hosts_file(layout),
    }
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    # run/lock: libvirt locks a console pty in /var/lock (-> /run/lock) before opening it.
    for sub in ("run/openvswitch", "run/libvirt", "run/sshd", "run/lock", "var/log/libvirt/qemu",
                "var/lib/libvirt/images"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    db = d / "etc/openvswitch/conf.db"
    db.unlink(missing_ok=True)
    namespaces.run(["ovsdb-tool", "create", str(db),
                    "/usr/share/openvswitch/vswitch.ovsschema"])
    install_host_pki(ca, d / "etc/pki", hostname=host.hostname, ip=host.ip)
    services.write_host_config(layout, host, ca)
    make_keypair(d / "etc/ssh/ssh_host_ed25519_key", f"root@{host.hostname}")


def _start(state: LabState, layout: LabLayout, host: HostLayout, role: str,
           argv: list[str]) -> None:
    enter = namespaces.enter_argv(host.netns, host.mnt_ns_file, host.uts_ns_file)
    record = processes.spawn(enter + argv, log=host.state_dir / "logs" / f"{role}.log",
                             host=host.name, role=role)
    state.processes.append(record)
    state.save(layout.state_file)


def _wait_for_path(path: Path, what: str, timeout_s: float = 20) -> None:
    if not wait_until(path.exists, timeout_s=timeout_s, interval_s=0.05):
        raise OperationTimeout(f"{what} did not create {path} in {timeout_s:.0f} s")


def _wait_for_tls(layout: LabLayout, state: LabState, host: HostLayout,
                  timeout_s: float = 45, restart_after_s: float = 15) -> None:
    """Wait until the host's libvirtd answers over TLS.

    A libvirtd that neither answers nor stays alive within ``restart_after_s`` (seen
    rarely, right after clearing a killed lab) is started once more from its recorded
    argv; a second failure is reported with the tail of its log.
    """
    started = SYSTEM.monotonic()
    restarted = False
    while True:
        try:
            with connection(layout.libvirt_uri(host), timeout_s=5) as conn:
                conn.getHostname()
                return
        except Exception as exc:
            waited = SYSTEM.monotonic() - started
            log = host.state_dir / "logs" / "libvirtd.log"
            if not restarted and waited > restart_after_s:
                record = _daemon_record(layout, state, host.name, "libvirtd")
                processes.stop([record])
                fresh = processes.spawn(record.argv, log=log, host=host.name, role="libvirtd")
                state.processes = [p for p in state.processes if p is not record] + [fresh]
                state.save(layout.state_file)
                restarted = True
            elif waited > timeout_s:
                tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
                raise OperationTimeout(
                    f"{host.name}: libvirtd did not answer over TLS at "
                    f"{host.libvirt_tls_uri} in {timeout_s:.0f} s ({exc}); log ends: {tail}",
                    hint=f"see {log}") from None
            SYSTEM.sleep(0.25)


def _write_cluster_file(layout: LabLayout, domain_type: str | None,
                        storage_kind: str = "dir") -> None:
    spec = ClusterSpec(
        name=layout.name,
        shared_pool=SHARED_POOL,
        # One directory every lab host sees (a dir pool), as NFS would be on real hosts.
        pool=PoolSpec(kind="dir", path=str(layout.shared_dir),
                      lockspace=str(layout.lockspace_dir)),
        storage="iscsi" if storage_kind == "iscsi" else "dir",
        labels={"ahvlite.lab": layout.name},
        hosts=[HostSpec(
            name=h.name, uri=layout.libvirt_uri(h),
            ssh=SshSpec(host=h.ip, user="root", key=layout.ssh_key,
                        known_hosts=layout.known_hosts),
            ovsdb=OvsdbSpec(remote=f"ssl:{h.ip}:{OVSDB_TLS_PORT}",
                            ca_cert=layout.client_pki_dir / "cacert.pem",
                            certificate=layout.client_pki_dir / "clientcert.pem",
                            private_key=layout.client_pki_dir / "clientkey.pem"),
            labels={"lab": layout.name, DOMAIN_TYPE_LABEL: domain_type or "unknown"})
            for h in layout.hosts],
        # What lab up built: br0 (userspace datapath) with bond br0-up = eth0 + eth1.
        network=NetworkSpec(bridges=[BridgeSpec(
            name=OVS_BRIDGE, datapath_type="netdev",
            uplink=BondSpec(name=BOND, members=list(UPLINKS)))]))
    layout.cluster_file.write_text(spec.dump_yaml())


# -- status -------------------------------------------------------------------

def list_labs() -> list[str]:
    if not labs_dir().exists():
        return []
    return sorted(d.name for d in labs_dir().iterdir() if (d / "state.json").exists())


def _layout_for(name: str) -> tuple[LabLayout, LabState]:
    state = LabState.load(lab_root(name) / "state.json")
    if state is None:
        labs = ", ".join(list_labs()) or "none"
        raise NotFound(f"no lab named {name!r} (labs here: {labs})",
                       hint="`ahvlite lab up` builds one")
    hosts = state.hosts or len(state.netns) or 1
    spec = LabSpec(name=name, hosts=hosts, subnet=ipaddress.IPv4Network(state.subnet))
    return plan_layout(spec, lab_root(name)), state


def status(name: str) -> dict[str, Any]:
    layout, state = _layout_for(name)
    images = cache_dir() / "guest"
    hosts = []
    for h in layout.hosts:
        procs = {p.role: {"pid": p.pid, "alive": processes.is_alive(p)}
                 for p in state.processes if p.host == h.name}
        hosts.append({
            "name": h.name, "hostname": h.hostname, "address": h.ip, "netns": h.netns,
            "libvirt_uri": layout.libvirt_uri(h),
            "ssh": {"host": h.ip, "user": "root", "key": str(layout.ssh_key),
                    "known_hosts": str(layout.known_hosts)},
            "daemons": procs,
            "up": bool(procs) and all(p["alive"] for p in procs.values()),
            # The bridge its uplinks are on: the lab bridge, or a partition's segment.
            "segment": segments.host_segment(layout, h),
        })
    return {
        "name": name,
        "phase": state.phase,
        "subnet": str(layout.subnet),
        "gateway": str(layout.gateway.ip),
        "bridge": layout.bridge,
        "domain_type": state.domain_type,
        "domain_type_reason": state.domain_type_reason,
        "cluster_file": str(layout.cluster_file),
        "state_dir": str(layout.root),
        "hosts": hosts,
        "pool": {"name": SHARED_POOL, "path": str(layout.shared_dir)},
        "storage": state.storage,
        "guest": {"kernel": str(images / "vmlinuz"), "initrd": str(images / "initrd.img"),
                  "disk": str(layout.shared_dir / GUEST_BASE)},
        "guest_addresses": [str(a) for a in layout.guest_addresses],
        "guests": state.guests,
        "timings_s": state.timings_s,
    }


def layout_of(name: str) -> LabLayout:
    return _layout_for(name)[0]


def state_of(name: str) -> LabState:
    return _layout_for(name)[1]


def env_line(name: str) -> str:
    """The shell line that points the CLI at the lab's API (``eval "$(...)"``)."""
    return "export " + " ".join(f"{k}={v}" for k, v in client_env(name).items())


def exec_argv(name: str, host: str, argv: list[str]) -> list[str]:
    layout, _ = _layout_for(name)
    h = layout.host(host)
    if not argv:
        argv = ["/bin/bash", "-l"]
    return namespaces.enter_argv(h.netns, h.mnt_ns_file, h.uts_ns_file) + argv


def stop_daemon(name: str, host: str, role: str) -> int:
    """Stop one daemon of a lab host by its recorded PID (to test failure handling)."""
    layout, state = _layout_for(name)
    record = _daemon_record(layout, state, host, role)
    processes.stop([record], grace_s=0 if role in KILLED_AT_ONCE else 5.0)
    return record.pid


def start_daemon(name: str, host: str, role: str) -> int:
    """Start a stopped daemon again with the argv it was first started with."""
    layout, state = _layout_for(name)
    record = _daemon_record(layout, state, host, role)
    if processes.is_alive(record):
        raise Conflict(f"{role} on {host} is already running (PID {record.pid})")
    log = layout.host(host).state_dir / "logs" / f"{role}.log"
    fresh = processes.spawn(record.argv, log=log, host=host, role=role)
    state.processes = [p for p in state.processes if p is not record] + [fresh]
    state.save(layout.state_file)
    return fresh.pid


def wait_libvirt(name: str, host: str, timeout_s: float = 45) -> None:
    """Wait until ``host``'s libvirtd answers over TLS (after its daemons started)."""
    layout, state = _layout_for(name)
    _wait_for_tls(layout, state, layout.host(host), timeout_s=timeout_s)


def _daemon_record(layout: LabLayout, state: LabState, host: str, role: str) -> ProcessRecord:
    layout.host(host)  # unknown host -> InvalidSpec listing the known ones
    for record in state.processes:
        if record.host == host and record.role == role:
            return record
    raise NotFound(f"no {role} recorded on {host}", hint=f"daemons: {', '.join(DAEMONS)}")


# -- down ---------------------------------------------------------------------

def _leftovers(name: str) -> bool:
    return (netlink.link_exists(bridge_name(name))
            or bool(netlink.links_with_prefix(veth_prefix(name)))
            or bool(netlink.links_with_prefix(segment_prefix(name)))
            or any(n.startswith(netns_prefix(name)) for n in netlink.list_netns()))


def down(name: str, *, keep: bool = False) -> dict[str, Any]:
    root = lab_root(name)
    if not (root / "state.json").exists() and not _leftovers(name):
        raise NotFound(f"no lab named {name!r}", hint="`ahvlite lab status` lists labs")
    return teardown(name, keep=keep)


def teardown(name: str, *, keep: bool) -> dict[str, Any]:
    """Remove everything lab ``name`` made: recorded objects plus any name-matched ones."""
    root = lab_root(name)
    state = LabState.load(root / "state.json") or LabState(name=name, subnet="")
    removed: dict[str, list[str]] = {"processes": [], "netns": [], "links": [], "mounts": []}
    netns_names = sorted(set(state.netns) | {
        n for n in netlink.list_netns() if n.startswith(netns_prefix(name))})

    _destroy_guests(root)
    ns_files = [Path(m) for m in state.mounts if m.endswith((".mnt", ".uts"))]
    if (root / "ns").exists():
        ns_files += [p for p in (root / "ns").iterdir() if p.suffix in (".mnt", ".uts")]
    # QEMU and anything else the lab's daemons started live in the lab's namespaces;
    # the netagent's dnsmasq in network namespaces of its own, but in its host's mount
    # namespace.
    victims = list(state.processes)
    for ns in netns_names:
        victims += processes.pids_in_netns(netlink.netns_path(ns))
    for f in sorted(set(ns_files)):
        if f.suffix == ".mnt":
            victims += processes.pids_in_mntns(f)
    processes.stop([v for v in victims if v.role in KILLED_AT_ONCE], grace_s=0)
    processes.stop(victims)
    removed["loops"] = _detach_loops(root)
    by_pid = {p.pid: p for p in reversed(victims)}  # recorded roles win over "leftover"
    removed["processes"] = [f"{p.role}:{p.pid}" for p in sorted(by_pid.values(),
                                                                key=lambda p: p.pid)]

    for f in sorted(set(ns_files)):
        namespaces.release_ns_file(f)
        removed["mounts"].append(str(f))
    for ns in netns_names:
        netlink.delete_netns(ns)
        removed["netns"].append(ns)
    links = set(state.links) | set(netlink.links_with_prefix(veth_prefix(name)))
    for link in sorted(links):
        netlink.delete_link(link)
        removed["links"].append(link)
    for seg in sorted(set(state.segments) | set(netlink.links_with_prefix(
            segment_prefix(name)))):
        if netlink.link_exists(seg):
            netlink.delete_link(seg)
            removed["links"].append(seg)
    bridge = state.bridge or bridge_name(name)
    if netlink.link_exists(bridge):
        netlink.delete_link(bridge)
        removed["links"].append(bridge)
    if (root / "ns").exists() and namespaces.is_mountpoint(root / "ns"):
        namespaces.run(["umount", "--lazy", str(root / "ns")], check=False)
        removed["mounts"].append(str(root / "ns"))
    if keep:
        state.phase = "down"
        state.processes = []
        state.segments = []
        state.save(root / "state.json")
    elif root.exists():
        shutil.rmtree(root, ignore_errors=False)
    _verify_gone(name, netns_names)
    return {"name": name, "removed": removed, "kept_state": keep}


def _destroy_guests(root: Path) -> None:
    """Power off guests through each host's libvirt socket so disks close cleanly."""
    from ahvlite.virt import guest

    hosts_dir = root / "hosts"
    if not hosts_dir.exists():
        return
    for host_dir in sorted(hosts_dir.iterdir()):
        sock = host_dir / "run/libvirt/libvirt-sock"
        if not sock.exists():
            continue
        try:
            with local_socket_connection(sock) as conn:
                for dom_name, _ in guest.list_domains(conn):
                    guest.destroy_and_undefine(conn, dom_name)
        except Exception:
            # A dead libvirtd cannot help; its QEMUs are ended by PID below.
            continue


def _detach_loops(root: Path) -> list[str]:
    """Loop devices backed by files of this lab (CVM lab LUNs), and only those."""
    if find_program("losetup") is None:
        return []
    listed = namespaces.run(["losetup", "--list", "--noheadings", "--raw",
                             "--output", "NAME,BACK-FILE"], check=False)
    detached = []
    for line in listed.stdout.splitlines():
        device, _, backing = line.partition(" ")
        backing = backing.strip().removesuffix(" (deleted)")
        if backing.startswith(f"{root}/"):
            namespaces.run(["losetup", "--detach", device], check=False)
            detached.append(device)
    return detached


def _verify_gone(name: str, netns_names: list[str]) -> None:
    left = [n for n in netns_names if (netlink.NETNS_DIR / n).exists()]
    if netlink.link_exists(bridge_name(name)):
        left.append(bridge_name(name))
    left += netlink.links_with_prefix(segment_prefix(name))
    if left:
        raise OperationFailed(f"lab {name!r}: could not remove {', '.join(left)}")
