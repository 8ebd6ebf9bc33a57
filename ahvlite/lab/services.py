"""ZooKeeper (Debian's package) and controllers as foreground processes we own.

Used by the lab (`lab up --zk/--controllers`) and by the tests: each member gets its
own config and data directory, runs ``QuorumPeerMain`` in the foreground and is ended
by the PID recorded at spawn, never through systemd or by name.

The lab's ensemble speaks TLS only (no plaintext client port): clients and members
present certificates of the lab CA, and the members talk to each other over TLS too.
Its credential is random per lab and reaches processes only through files
(``$AHVLITE_STORE_SECRET_FILE``), never a command line.
"""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ahvlite.clock import wait_until
from ahvlite.controller.coord.ensemble import tls_context
from ahvlite.controller.coord.url import (
    ENV_SECRET_FILE,
    ENV_TLS_DIR,
    TLS_CA,
    TLS_CERT,
    TLS_KEY,
    ZkTls,
)
from ahvlite.controller.kinds.drill import DRILL_ENV
from ahvlite.errors import MissingDependency, OperationTimeout
from ahvlite.lab import processes
from ahvlite.lab.layout import HostLayout, LabLayout
from ahvlite.lab.pki import (
    STORE_DIR,
    ZK_KEYSTORE,
    ZK_SERVER_DIR,
    ZK_TRUSTSTORE,
    LabCA,
    install_ahvlite_pki,
    install_store_client,
    write_secret,
)
from ahvlite.lab.state import ProcessRecord

ZK_JAR_DIR = Path("/usr/share/java")
ZK_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
# Debian's zookeeper.jar lists netty-handler in its manifest but not netty-codec, which
# Netty's SslHandler is built on: without it the TLS port drops every connection
# (ClassNotFoundException: io.netty.handler.codec.ByteToMessageDecoder).
ZK_JARS = ("zookeeper.jar", "zookeeper-jute.jar", "slf4j-api.jar", "slf4j-simple.jar",
           "netty-codec.jar")
NETTY_FACTORY = "org.apache.zookeeper.server.NettyServerCnxnFactory"
# tickTime 500 ms lets sessions be as short as 1 s (ZooKeeper's minimum is 2 ticks),
# which is what keeps a controller failover under 5 s.
TICK_MS = 500
ZK_TLS_PORT = 2281  # ZooKeeper's customary secure client port


@dataclass(frozen=True)
class MemberTls:
    """A member's TLS: its key store (key and certificate naming its address, PEM),
    its trust store (the CA), and a client identity that may ask it (``srvr``)."""

    keystore: Path
    truststore: Path
    client: ZkTls


@dataclass(frozen=True)
class ZkMember:
    myid: int
    address: str
    client_port: int  # the secure client port when ``tls`` is set
    quorum_port: int
    election_port: int
    data_dir: Path
    tls: MemberTls | None = None

    @property
    def client(self) -> str:
        return f"{self.address}:{self.client_port}"


def zk_classpath() -> str:
    jars = [ZK_JAR_DIR / n for n in ZK_JARS]
    missing = [str(j) for j in jars if not j.exists()]
    if missing:
        raise MissingDependency(f"ZooKeeper jars missing: {', '.join(missing)}",
                                hint="apt-get install zookeeper libslf4j-java libnetty-java")
    return ":".join(str(j) for j in jars)


def free_ports(n: int, address: str = "127.0.0.1") -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((address, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def local_members(base: Path, count: int, address: str = "127.0.0.1") -> list[ZkMember]:
    ports = free_ports(3 * count, address)
    return [ZkMember(i + 1, address, ports[3 * i], ports[3 * i + 1], ports[3 * i + 2],
                     base / f"zk{i + 1}") for i in range(count)]


def tls_config(keystore: Path, truststore: Path) -> list[str]:
    """zoo.cfg lines for TLS with PEM files (ZooKeeper 3.8 reads them as key and trust
    stores of type PEM), for clients and, between members, for the quorum. A client
    must present a certificate of the CA (``ssl.clientAuth=need``)."""
    lines = [f"serverCnxnFactory={NETTY_FACTORY}", "ssl.clientAuth=need", "sslQuorum=true"]
    for prefix in ("ssl", "ssl.quorum"):
        lines += [f"{prefix}.keyStore.location={keystore}", f"{prefix}.keyStore.type=PEM",
                  f"{prefix}.trustStore.location={truststore}",
                  f"{prefix}.trustStore.type=PEM"]
    return lines


def zk_config(me: ZkMember, ensemble: Sequence[ZkMember]) -> str:
    """zoo.cfg for ``me``; a one-member ensemble runs standalone. With TLS there is no
    plaintext client port at all."""
    lines = [f"tickTime={TICK_MS}", "initLimit=20", "syncLimit=5",
             f"dataDir={me.data_dir}", "admin.enableServer=false",
             "4lw.commands.whitelist=ruok,srvr,mntr", "minSessionTimeout=1000",
             "maxSessionTimeout=30000", "autopurge.purgeInterval=0"]
    if me.tls is None:
        lines += [f"clientPort={me.client_port}", f"clientPortAddress={me.address}"]
    else:
        lines += [f"secureClientPort={me.client_port}",
                  f"secureClientPortAddress={me.address}",
                  *tls_config(me.tls.keystore, me.tls.truststore)]
    if len(ensemble) > 1:
        lines += [f"server.{m.myid}={m.address}:{m.quorum_port}:{m.election_port}"
                  for m in ensemble]
    return "\n".join(lines) + "\n"


def zk_argv(cfg: Path, heap_mib: int = 96) -> list[str]:
    return ["java", f"-Xmx{heap_mib}m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.jmx.log4j.disable=true", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-cp", zk_classpath(), ZK_MAIN, str(cfg)]


def prepare_member(me: ZkMember, ensemble: Sequence[ZkMember], *,
                   root: Path | None = None) -> Path:
    """Write ``me``'s myid and zoo.cfg; ``root``: where its data dir lies as this process
    sees it (a lab host's private directory), when that is not ``me.data_dir``."""
    d = root or me.data_dir
    d.mkdir(parents=True, exist_ok=True)
    (d / "myid").write_text(f"{me.myid}\n")
    cfg = d / "zoo.cfg"
    cfg.write_text(zk_config(me, ensemble))
    return cfg


def start_member(me: ZkMember, ensemble: Sequence[ZkMember], *, prefix: Sequence[str] = (),
                 host: str = "") -> ProcessRecord:
    """Spawn one member (``prefix``: e.g. nsenter into a lab host)."""
    cfg = prepare_member(me, ensemble)
    return processes.spawn([*prefix, *zk_argv(cfg)], log=me.data_dir / "zookeeper.log",
                           host=host, role=f"zookeeper-{me.myid}")


def four_letter(address: str, port: int, word: str, timeout_s: float = 1.0,
                context: ssl.SSLContext | None = None) -> str:
    with socket.create_connection((address, port), timeout=timeout_s) as raw:
        s = raw if context is None else context.wrap_socket(raw, server_hostname=address)
        with s:
            s.sendall(word.encode())
            chunks = []
            while data := s.recv(4096):
                chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


# Probes run ten times a second while a lab comes up, so their TLS contexts are kept;
# keyed by the files' identity too, because the next lab of the same name has a new CA
# at the same paths (a context keyed by path alone would refuse its members).
_CONTEXTS: dict[tuple[ZkTls, tuple[tuple[int, int], ...]], ssl.SSLContext] = {}


def _context(m: ZkMember) -> ssl.SSLContext | None:
    if m.tls is None:
        return None
    files = (m.tls.client.ca, m.tls.client.cert, m.tls.client.key)
    try:
        stamp = tuple((st.st_ino, st.st_mtime_ns) for st in map(os.stat, files))
    except OSError:
        return tls_context(m.tls.client)  # raises the clear error about the missing file
    key = (m.tls.client, stamp)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = tls_context(m.tls.client)
    return _CONTEXTS[key]


def member_mode(m: ZkMember) -> str | None:
    """leader / follower / standalone, or None while it does not serve."""
    try:
        out = four_letter(m.address, m.client_port, "srvr", context=_context(m))
    except OSError:
        return None
    for line in out.splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


def wait_serving(members: Sequence[ZkMember], timeout_s: float = 30) -> None:
    if wait_until(lambda: all(member_mode(m) for m in members), timeout_s=timeout_s,
                  interval_s=0.1):
        return
    raise OperationTimeout(f"ZooKeeper did not serve within {timeout_s:g} s on "
                           + ", ".join(m.client for m in members if not member_mode(m)),
                           hint=f"see {members[0].data_dir}/zookeeper.log")


def hosts_string(members: Sequence[ZkMember]) -> str:
    return ",".join(m.client for m in members)


def controller_argv(name: str, store: str, *, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "ahvlite.cli.main", "controller", "run", "--store", store,
            "--name", name, *extra]


@dataclass
class LocalEnsemble:
    """A ZooKeeper ensemble of our own processes on one address (tests, benches)."""

    members: list[ZkMember]
    records: dict[int, ProcessRecord]
    tls_dir: Path | None = None  # a client's TLS files, when the ensemble speaks TLS only

    @property
    def hosts(self) -> str:
        return hosts_string(self.members)

    def url(self, chroot: str, auth: str = "ahvlite:test-secret") -> str:
        return f"zk://{auth}@{self.hosts}/{chroot.strip('/')}"

    def env(self) -> dict[str, str]:
        """What a client's environment needs besides the URL ({} without TLS)."""
        return {ENV_TLS_DIR: str(self.tls_dir)} if self.tls_dir else {}

    def kill(self, myid: int) -> None:
        processes.stop([self.records.pop(myid)], grace_s=0)

    def stop(self) -> None:
        processes.stop(list(self.records.values()), grace_s=2)
        self.records.clear()


def _local_tls(base: Path, members: list[ZkMember]) -> tuple[list[ZkMember], Path]:
    """A CA of the ensemble's own, a certificate per member and one client's files."""
    ca = LabCA.create(f"zk {base.name}")
    client_dir = base / "client"
    install_store_client(ca, client_dir, name="ahvlite-test-client")
    client = ZkTls.from_dir(client_dir)
    out = []
    for m in members:
        pki = m.data_dir / "pki"
        install_ahvlite_pki(ca, pki, hostname=f"zk{m.myid}", ip=m.address)
        out.append(ZkMember(m.myid, m.address, m.client_port, m.quorum_port,
                            m.election_port, m.data_dir, MemberTls(
                                pki / ZK_SERVER_DIR / ZK_KEYSTORE,
                                pki / ZK_SERVER_DIR / ZK_TRUSTSTORE, client)))
    return out, client_dir


def start_local_ensemble(base: Path, count: int, *, timeout_s: float = 60,
                         tls: bool = False) -> LocalEnsemble:
    """Start ``count`` members on 127.0.0.1 (random free ports), wait until they serve;
    with ``tls``, on their TLS port only (clients: :meth:`LocalEnsemble.env`)."""
    members = local_members(base, count)
    tls_dir = None
    if tls:
        members, tls_dir = _local_tls(base, members)
    ens = LocalEnsemble(members, {}, tls_dir)
    try:
        for m in members:
            ens.records[m.myid] = start_member(m, members)
        wait_serving(members, timeout_s)
    except BaseException:
        ens.stop()
        raise
    return ens


# -- in a lab ---------------------------------------------------------------------

LAB_ZK_MEMBERS = 3
LAB_ZK_USER = "ahvlite"


# Where a lab host keeps ahvlite's files, inside the host (its private /etc/ahvlite and
# /var/lib/ahvlite; the state dir holds them in the root namespace).
ETC = Path("/etc/ahvlite")
ZK_DIR = Path("/var/lib/ahvlite/zookeeper")
API_PORT = 9440


def lab_zk_members(layout: LabLayout) -> list[ZkMember]:
    """One member per lab host namespace (the first three), on its management address,
    its data in the host's private /var/lib/ahvlite; TLS only, with the host's
    certificates (its /etc/ahvlite/pki: install_ahvlite_pki), probed with the root
    namespace's store client certificate."""
    d = layout.store_tls_dir
    client = ZkTls(d / TLS_CA, d / TLS_CERT, d / TLS_KEY)
    server = ETC / "pki" / ZK_SERVER_DIR
    return [ZkMember(h.index, h.ip, ZK_TLS_PORT, 2888, 3888, ZK_DIR,
                     MemberTls(server / ZK_KEYSTORE, server / ZK_TRUSTSTORE, client))
            for h in layout.hosts[:LAB_ZK_MEMBERS]]


def lab_store_url(layout: LabLayout) -> str:
    """The lab's store: no credential in it (the secret is in a file, see
    :func:`lab_store_env`), TLS only."""
    return f"zk://{hosts_string(lab_zk_members(layout))}/ahvlite"


def lab_store_env(layout: LabLayout) -> dict[str, str]:
    """The environment a client in the root namespace (the admin's machine) reaches the
    lab's store with: its URL, the secret's file and the TLS files."""
    return {"AHVLITE_STORE": lab_store_url(layout),
            ENV_SECRET_FILE: str(layout.store_secret_file),
            ENV_TLS_DIR: str(layout.store_tls_dir)}


def open_lab_store(layout: LabLayout, **kw: Any) -> Any:
    """A coordinator on the lab's store, from the root namespace."""
    from ahvlite.controller.coord import open_store

    env = lab_store_env(layout)
    return open_store(env["AHVLITE_STORE"], env=env, **kw)


def write_lab_store_credentials(layout: LabLayout, ca: LabCA) -> None:
    """A fresh credential for the lab's store (each host gets a copy:
    :func:`write_host_config`), and the root namespace's store client certificate."""
    write_secret(layout.store_secret_file,
                 f"{LAB_ZK_USER}:{secrets.token_urlsafe(24)}\n".encode())
    install_store_client(ca, layout.store_tls_dir, name=f"ahvlite-{layout.name}-client")


def inside(host: HostLayout, path: Path) -> Path:
    """Where a path of ``host``'s private directories lies in the root namespace."""
    return host.state_dir / path.relative_to("/")


def api_url(host: HostLayout) -> str:
    return f"https://{host.ip}:{API_PORT}"


def controller_env(layout: LabLayout, host: HostLayout) -> str:
    """The host's /etc/ahvlite/controller.env: what the systemd units read on a real
    host (the store secret is a file beside it, never on a command line)."""
    lines = {
        "AHVLITE_STORE": lab_store_url(layout),
        ENV_SECRET_FILE: str(ETC / "store.secret"),
        ENV_TLS_DIR: str(ETC / "pki" / STORE_DIR),
        "AHVLITE_HOST": host.name,
        "AHVLITE_API_LISTEN": f"{host.ip}:{API_PORT}",
        "AHVLITE_API_URL": api_url(host),
        "AHVLITE_API_CERT": str(ETC / "pki" / "api.pem"),
        "AHVLITE_API_KEY": str(ETC / "pki" / "api-key.pem"),
        "AHVLITE_API_CA": str(ETC / "pki" / "ca.pem"),
        "AHVLITE_LIBVIRT_URI": "qemu:///system",
        "AHVLITE_WATCHDOG": f"unix:{LAB_WATCHDOG}",
        # A lab's controllers also run the drill task kinds (a production one refuses).
        DRILL_ENV: "1",
    }
    return "# written by ahvlite lab up, read like systemd's EnvironmentFile=\n" + "".join(
        f"{k}={v}\n" for k, v in lines.items())


def write_host_config(layout: LabLayout, host: HostLayout, ca: LabCA) -> None:
    """The host's /etc/ahvlite, as the playbook lays it out on a real host: environment
    file, the store's secret (the lab's), and pki/ (API, store client, ZooKeeper
    member: install_ahvlite_pki)."""
    etc = inside(host, ETC)
    install_ahvlite_pki(ca, etc / "pki", hostname=host.hostname, ip=host.ip)
    write_secret(etc / "controller.env", controller_env(layout, host).encode())
    write_secret(etc / "store.secret", layout.store_secret_file.read_bytes())


def start_lab_services(layout: LabLayout, *, zk: bool, controllers: bool,
                       start: Callable[[HostLayout, str, list[str]], None],
                       report: Callable[[str], None]) -> str | None:
    """ZooKeeper members and, per host, a controller, a host agent, a netagent (DHCP of
    managed networks) and a watchdog; all inside the lab hosts, the daemons run as
    their systemd units run them on a real host. Returns the store URL (with an admin's
    credentials: for the root namespace).

    ``start(host, role, argv)`` spawns in the host's namespaces and records the PID in
    the lab state, so ``lab down`` ends them like every other lab daemon.
    """
    if not (zk or controllers):
        return None
    members = lab_zk_members(layout)
    report(f"ZooKeeper ensemble of {len(members)} on "
           + ", ".join(h.name for h in layout.hosts[:len(members)]) + " (TLS only)")
    for host, m in zip(layout.hosts, members, strict=False):
        prepare_member(m, members, root=inside(host, m.data_dir))
        start(host, "zookeeper", zk_argv(m.data_dir / "zoo.cfg"))
    wait_serving(members, timeout_s=60)
    url = lab_store_url(layout)
    # For a client in the root namespace: `export $(cat STATE/controller.env)`.
    (layout.root / "controller.env").write_text("".join(
        f"{k}={v}\n" for k, v in lab_store_env(layout).items()))
    if controllers:
        report(f"a controller, a host agent, a netagent and a watchdog on every host "
               f"({len(layout.hosts)})")
        for host in layout.hosts:
            start(host, "watchdog", watchdog_argv())
            start(host, "controller", supervised(unit_argv("controller")))
            start(host, "agent", supervised(unit_argv("agent")))
            # The DHCP of managed networks: its dnsmasq responders live in namespaces
            # of their own inside the host; lab down ends them by the host's mount
            # namespace.
            start(host, "netagent", supervised(unit_argv("netagent")))
    return url


def supervised(argv: list[str]) -> list[str]:
    """Restarted when it dies, like the systemd units on a real host."""
    return [sys.executable, "-m", "ahvlite.lab.supervise", "--", *argv]


def unit_argv(daemon: str) -> list[str]:
    """The daemon as its systemd unit runs it: environment file, no arguments."""
    return [sys.executable, "-m", "ahvlite.lab.unit", daemon]


LAB_WATCHDOG = "/run/ahvlite/watchdog.sock"  # inside each host (its own /run)


def watchdog_argv() -> list[str]:
    return [sys.executable, "-m", "ahvlite.lab.watchdogd", "--socket", LAB_WATCHDOG]
