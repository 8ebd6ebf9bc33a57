"""The ZooKeeper store through kazoo: keys, ephemeral members, Election and Lock recipes.

Layout under the chroot: ``kv/KEY`` (values, znode version = key version),
``members/NAME`` (ephemeral), ``election`` (kazoo Election), ``locks/NAME`` (kazoo
Lock). Every znode we create carries only a digest ACL of ahvlite's credentials:
nobody else may read a task's parameters or a VM's spec, nor list the keys. A store
whose chroot still lets the world read (written by an older ahvlite) is tightened,
children first, when a coordinator connects. The election znode is the fencing token:
:meth:`ZkCoordinator.fenced` puts a ``check`` of it at the head of the transaction,
so once the session is gone (and the ephemeral znode with it) nothing more commits.
A SUSPENDED connection stops acting at once; LOST gives leadership up.

Commands run under kazoo's retry, which sends a command again when the connection drops
before its reply arrives; the first send may well have been applied. So a retried write
that fails re-reads and recognises its own success (our values at the versions we
expected plus one, our deletes gone), and a member znode held by our own session is
ours: a lost reply never turns into a false conflict.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    LockTimeout,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RolledBackError,
    SessionExpiredError,
)
from kazoo.exceptions import OperationTimeoutError as ZkOperationTimeout
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry, RetryFailedError
from kazoo.security import make_digest_acl

from ahvlite.clock import SYSTEM, Clock, wait_until
from ahvlite.controller.coord import ensemble
from ahvlite.controller.coord.api import (
    MUST_NOT_EXIST,
    Check,
    Delete,
    Leadership,
    MemberState,
    NotLeader,
    Op,
    Put,
    Versioned,
    VersionMismatch,
    check_key,
)
from ahvlite.controller.coord.url import ZkUrl
from ahvlite.errors import (
    AhvliteError,
    Conflict,
    HostUnreachable,
    NotFound,
    OperationFailed,
    OperationTimeout,
)

log = logging.getLogger(__name__)
LOCK_MARK = "__lock__"
# kazoo logs every dropped connection; our errors say what matters. A daemon that
# configures logging still gets kazoo's records through propagation.
logging.getLogger("kazoo").addHandler(logging.NullHandler())
F = TypeVar("F", bound=Callable[..., Any])


def translate(exc: Exception, context: str) -> AhvliteError:
    """kazoo's exceptions -> ahvlite's, once, here."""
    if isinstance(exc, NoNodeError):
        return NotFound(f"{context}: no such key")
    if isinstance(exc, NodeExistsError):
        return VersionMismatch(f"{context}: already exists")
    if isinstance(exc, BadVersionError):
        return VersionMismatch(f"{context}: version changed")
    if isinstance(exc, NoAuthError):
        return OperationFailed(f"{context}: ZooKeeper refused our credentials",
                               hint="every controller needs the same USER:SECRET "
                                    "(the file $AHVLITE_STORE_SECRET_FILE names)")
    if isinstance(exc, NotEmptyError):
        return Conflict(f"{context}: key has children")
    if isinstance(exc, ConnectionLoss | SessionExpiredError | ConnectionClosedError):
        return HostUnreachable(f"{context}: lost the ZooKeeper connection ({type(exc).__name__})")
    if isinstance(exc, ZkOperationTimeout | KazooTimeoutError):
        return OperationTimeout(f"{context}: ZooKeeper did not answer in time")
    return OperationFailed(f"{context}: {type(exc).__name__}: {exc}")


@contextmanager
def zk_errors(context: str) -> Iterator[None]:
    try:
        yield
    except (KazooException, KazooTimeoutError) as exc:
        raise translate(exc, context) from None


def _op(context: str) -> Callable[[F], F]:
    """Run a store operation under kazoo's retry (a member may be failing over), and
    translate what still fails, once, here."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: ZkCoordinator, *args: Any, **kwargs: Any) -> Any:
            try:
                return self._client.retry(fn, self, *args, **kwargs)
            except RetryFailedError:
                raise HostUnreachable(
                    f"{context} {args[0] if args else ''}: no ZooKeeper quorum answered "
                    f"for {self._retry_s:g} s", hint="check the ensemble members") from None
            except (KazooException, KazooTimeoutError) as exc:
                where = f"{context} {args[0]}" if args and isinstance(args[0], str) else context
                raise translate(exc, where) from None

        return wrapper  # type: ignore[return-value]

    return deco


def _seq(node: str) -> int:
    """Fencing token: the election znode's sequence number, from 1 like SQLite's epoch."""
    return int(node.rsplit(LOCK_MARK, 1)[1]) + 1 if LOCK_MARK in node else 1 << 62


class ZkCoordinator:
    """:class:`~ahvlite.controller.coord.api.Coordinator` on a ZooKeeper ensemble."""

    def __init__(self, url: ZkUrl, *, session_timeout_s: float = 3.0,
                 connect_timeout_s: float = 5.0, retry_s: float | None = None,
                 clock: Clock = SYSTEM) -> None:
        self.url = url.redacted()
        self.session_timeout_s = session_timeout_s
        self.clock = clock
        self.root = url.chroot
        self._members = url.hosts
        # How long a command is retried across reconnects (a host agent wants to know
        # soon: its tick must go on to fence; a controller can wait for an election).
        self._retry_s = retry_s if retry_s is not None else max(2 * session_timeout_s, 10.0)
        auth = f"{url.user}:{url.secret}"
        self._acl = [make_digest_acl(url.user, url.secret, all=True)]
        self._parents: set[str] = set()  # paths this client made sure exist
        self._ask = ensemble.asker(url.tls)  # checks the TLS files before anything starts
        tls: dict[str, Any] = {}
        if url.tls is not None:
            # kazoo also trusts the system's CAs; checking that the member's certificate
            # names the address we dialled keeps them from vouching for a member.
            tls = {"use_ssl": True, "ca": str(url.tls.ca), "certfile": str(url.tls.cert),
                   "keyfile": str(url.tls.key), "verify_certs": True, "check_hostname": True}
        self._client = KazooClient(
            hosts=url.hosts_string(), timeout=session_timeout_s,
            auth_data=[("digest", auth)], default_acl=self._acl, **tls,
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, max_delay=0.5),
            # A member going away costs a reconnect (and maybe a quorum election):
            # retry commands across that, but not past the time a session would live.
            command_retry=KazooRetry(max_tries=-1, delay=0.1, max_delay=0.5,
                                     deadline=self._retry_s, ignore_expire=False))
        self._mu = threading.Lock()
        self._token: int | None = None
        self._node: str | None = None  # our election znode, while we lead
        self._suspended = False
        self._generation = 0  # bumped on every reconnect (see generation())
        self._closed = False
        self._resigned = threading.Event()
        self._stand_down = threading.Event()
        self._campaign: threading.Thread | None = None
        self._election: Any = None
        self._my_members: dict[str, bytes] = {}
        self._rejoin = threading.Event()
        self._client.add_listener(self._on_state)
        try:
            self._client.start(timeout=connect_timeout_s)
        except KazooTimeoutError:
            self._client.stop()
            self._client.close()
            raise HostUnreachable(
                f"store {self.url}: no ZooKeeper server answered within "
                f"{connect_timeout_s:g} s", hint="check the hosts and ports in the URL, "
                "and that the ensemble has a quorum") from None
        with zk_errors(f"store {self.url}"):
            for sub in ("kv", "members", "election", "locks"):
                self._client.ensure_path(f"{self.root}/{sub}", acl=self._acl)
            self._tighten_acls()
        threading.Thread(target=self._rejoin_loop, daemon=True, name="zk-rejoin").start()

    # -- session ----------------------------------------------------------------

    def _on_state(self, state: str) -> None:
        # Runs on kazoo's event thread: record, never block.
        if state == KazooState.SUSPENDED:
            self._suspended = True
        elif state == KazooState.LOST:
            self._suspended = True
            if self._token is not None:
                self._token = None
                self._stand_down.set()
        elif state == KazooState.CONNECTED:
            if self._suspended:
                self._generation += 1
            self._suspended = False
            self._rejoin.set()

    def _rejoin_loop(self) -> None:
        # Ephemeral members die with a session; a new session announces them again.
        while not self._closed:
            self._rejoin.wait()
            self._rejoin.clear()
            for name, data in list(self._my_members.items()):
                try:
                    self._client.create(f"{self.root}/members/{name}", data, ephemeral=True)
                except NodeExistsError:
                    pass
                except Exception:
                    self.clock.sleep(0.2)
                    self._rejoin.set()

    def _path(self, key: str) -> str:
        return f"{self.root}/kv/{check_key(key)}"

    def _tighten_acls(self) -> None:
        """Give every znode under the chroot our ACL alone, if the chroot (the last one
        changed) still carries another: an older ahvlite let the world read."""
        if self._client.get_acls(self.root)[0] == self._acl:
            return
        log.warning("store %s: znodes readable by others; restricting them to "
                    "ahvlite's credentials", self.url)
        for path in [*self._walk(self.root)][::-1]:  # children first, the chroot last
            try:
                if self._client.get_acls(path)[0] != self._acl:
                    self._client.set_acls(path, self._acl)
            except NoNodeError:
                continue

    def _walk(self, path: str) -> Iterator[str]:
        yield path
        try:
            children = self._client.get_children(path)
        except NoNodeError:
            return
        for name in children:
            yield from self._walk(f"{path}/{name}")

    # -- keys -------------------------------------------------------------------

    def ensemble(self, timeout_s: float = 0.5) -> list[MemberState]:
        """Every ensemble member's ``srvr`` answer (see coord/ensemble.py)."""
        return ensemble.probe(self._members, timeout_s, ask=self._ask, clock=self.clock)

    @_op("sync")
    def sync(self, key: str) -> None:
        self._client.sync(self._path(key))

    def generation(self) -> int:
        # Every interruption counts, even one that kept the session: while we were
        # away a store election may have run, and whoever timed a host agent's
        # heartbeat across it must start timing again (docs/ha.md).
        return self._generation + (1 if self._suspended else 0)

    @_op("get")
    def get(self, key: str) -> Versioned | None:
        try:
            data, stat = self._client.get(self._path(key))
        except NoNodeError:
            return None
        return Versioned(data, stat.version)

    def put(self, key: str, value: bytes, expected_version: int | None = None) -> int:
        return self._put(key, value, expected_version, [0])

    @_op("put")
    def _put(self, key: str, value: bytes, expected_version: int | None,
             tries: list[int]) -> int:
        tries[0] += 1
        path = self._path(key)
        if expected_version == MUST_NOT_EXIST:
            try:
                self._client.create(path, value, makepath=True)
            except NodeExistsError:
                # A retry after a lost reply finds its own create: same bytes, version 0.
                data, stat = self._client.get(path)
                if data != value or stat.version != 0:
                    raise
            return 0
        if expected_version is not None:
            try:
                return int(self._client.set(path, value, version=expected_version).version)
            except NoNodeError:
                raise VersionMismatch(f"put {key}: does not exist") from None
            except BadVersionError:
                if tries[0] > 1 and self._applied([Put(key, value, expected_version)]):
                    return expected_version + 1
                raise
        while True:
            try:
                return int(self._client.set(path, value).version)
            except NoNodeError:
                try:
                    self._client.create(path, value, makepath=True)
                    return 0
                except NodeExistsError:
                    continue

    def delete(self, key: str, expected_version: int | None = None) -> None:
        self._delete(key, expected_version, [0])

    @_op("delete")
    def _delete(self, key: str, expected_version: int | None, tries: list[int]) -> None:
        tries[0] += 1
        try:
            self._client.delete(self._path(key), version=-1 if expected_version is None
                                else expected_version)
        except NoNodeError:
            if tries[0] == 1:
                raise
            # A retry finds the key gone: our first send deleted it.

    @_op("list")
    def children(self, prefix: str) -> dict[str, Versioned]:
        out = {}
        try:
            names = self._client.get_children(self._path(prefix))
        except NoNodeError:
            return {}
        # Pipelined: every get sent before the first answer is awaited (one round trip
        # for a thousand IPAM keys, not a thousand).
        base = self._path(prefix)
        pending = [(name, self._client.get_async(f"{base}/{name}")) for name in names]
        for name, result in pending:
            try:
                data, stat = result.get(timeout=self._retry_s)
            except NoNodeError:
                continue
            out[name] = Versioned(data, stat.version)
        return out

    @_op("list")
    def names(self, prefix: str) -> list[str]:
        try:
            return sorted(self._client.get_children(self._path(prefix)))
        except NoNodeError:
            return []

    def _applied(self, ops: list[Op]) -> bool:
        """Whether the store shows what ``ops`` leave: each Put's key holds its value
        (at the expected version + 1 when one was expected), each Delete's key is gone.
        Asked only after a retried command failed, to recognise our own first send."""
        writes = [op for op in ops if not isinstance(op, Check)]
        if not writes:
            # Only checks: nothing shows whether the first send passed, so check again
            # (it must still hold, which is the stronger answer).
            for check in ops:
                assert isinstance(check, Check)
                stat = self._client.exists(self._path(check.key))
                if stat is None or stat.version != check.version:
                    return False
            return True
        for op in writes:  # the writes landed, so the checks beside them passed
            path = self._path(op.key)
            if isinstance(op, Delete):
                if self._client.exists(path) is not None:
                    return False
                continue
            try:
                data, stat = self._client.get(path)
            except NoNodeError:
                return False
            if data != op.value or (op.expected_version is not None
                                    and stat.version != op.expected_version + 1):
                return False
        return True

    @_op("transaction")
    def _commit(self, ops: list[Op], fence: str | None, tries: list[int]) -> None:
        tries[0] += 1
        # Each parent once, and only the first time this client writes below it (a
        # round trip each): a batch of IPAM keys shares two parents, and parents stay.
        # One removed behind our back: forgotten, made again, the commit sent again.
        trusted = False
        for parent in dict.fromkeys(self._path(op.key).rsplit("/", 1)[0] for op in ops
                                    if isinstance(op, Put)
                                    and op.expected_version in (None, MUST_NOT_EXIST)):
            if parent in self._parents:
                trusted = True
            else:
                self._client.ensure_path(parent, acl=self._acl)
                self._parents.add(parent)
        t = self._client.transaction()
        if fence is not None:
            t.check(fence, 0)
        for op in ops:
            path = self._path(op.key)
            if isinstance(op, Put):
                if op.expected_version == MUST_NOT_EXIST:
                    t.create(path, op.value)
                elif op.expected_version is None:
                    if self._client.exists(path):
                        t.set_data(path, op.value)
                    else:
                        t.create(path, op.value)
                else:
                    t.set_data(path, op.value, version=op.expected_version)
            elif isinstance(op, Delete):
                t.delete(path, version=-1 if op.expected_version is None
                         else op.expected_version)
            elif isinstance(op, Check):
                t.check(path, op.version)
        results = t.commit()
        failed = [(i, r) for i, r in enumerate(results)
                  if isinstance(r, Exception) and not isinstance(r, RolledBackError)]
        if not failed:
            return
        if trusted and any(isinstance(r, NoNodeError) for _, r in failed):
            self._parents.clear()
            self._commit(ops, fence, tries)
            return
        if tries[0] > 1 and self._applied(ops):
            # Our first send committed (the fence held then); only its reply was lost.
            return
        i, exc = failed[0]
        if fence is not None:
            if i == 0:
                self._token = None
                raise NotLeader("leadership is gone: our election znode no longer exists")
            i -= 1
        raise translate(exc, f"transaction on {ops[i].key}")

    def transaction(self, ops: list[Op]) -> None:
        self._commit(ops, None, [0])

    def watch(self, key: str, callback: Callable[[Versioned | None], None]) -> Callable[[], None]:
        stopped = threading.Event()

        def fire(data: bytes | None, stat: Any) -> bool | None:
            if stopped.is_set():
                return False
            callback(None if stat is None else Versioned(data or b"", stat.version))
            return None

        with zk_errors(f"watch {key}"):
            self._client.DataWatch(self._path(key), fire)
        return stopped.set

    # -- membership -------------------------------------------------------------

    @_op("join")
    def join(self, member: str, data: bytes) -> None:
        check_key(member)
        path = f"{self.root}/members/{member}"
        try:
            self._client.create(path, data, ephemeral=True)
        except NodeExistsError:
            # Held by our own session: our create of a retried join (its reply lost).
            stat = self._client.exists(path)
            if stat is None or stat.ephemeralOwner != self._client.client_id[0]:
                raise Conflict(f"controller name {member!r} is already in use",
                               hint="give each controller its own --name") from None
        self._my_members[member] = data

    @_op("member")
    def update_member(self, member: str, data: bytes) -> None:
        self._my_members[member] = data
        self._client.set(f"{self.root}/members/{member}", data)

    @_op("leave")
    def leave(self, member: str) -> None:
        self._my_members.pop(member, None)
        try:
            self._client.delete(f"{self.root}/members/{member}")
        except NoNodeError:
            pass

    @_op("members")
    def members(self) -> dict[str, bytes]:
        out = {}
        for name in self._client.get_children(f"{self.root}/members"):
            try:
                out[name] = self._client.get(f"{self.root}/members/{name}")[0]
            except NoNodeError:
                continue
        return out

    # -- leadership -------------------------------------------------------------

    def campaign(self, identity: str, on_elected: Callable[[int], None],
                 on_lost: Callable[[str], None]) -> None:
        self._resigned.clear()

        def lead() -> None:
            node = f"{self.root}/election/{self._election.lock.node}"
            self._node = node
            self._stand_down.clear()
            self._token = _seq(node)
            if self._suspended:  # elected over a connection that just went away
                self._token = None
                return
            on_elected(self._token)
            self._stand_down.wait()

        def loop() -> None:
            while not self._resigned.is_set() and not self._closed:
                self._election = self._client.Election(f"{self.root}/election", identity)
                try:
                    self._election.run(lead)
                except Exception:  # lock release on a dead session: the znode dies anyway
                    pass
                was = self._node is not None
                self._token, self._node = None, None
                if was:
                    on_lost("resigned" if self._resigned.is_set() else "session lost")
                if not self._resigned.is_set():
                    wait_until(lambda: self._client.state == KazooState.CONNECTED
                               or self._closed, timeout_s=math.inf, interval_s=0.05,
                               clock=self.clock)

        self._campaign = threading.Thread(target=loop, daemon=True, name="zk-election")
        self._campaign.start()

    def resign(self) -> None:
        self._token = None
        self._resigned.set()
        self._stand_down.set()
        if self._election is not None:
            try:
                self._election.cancel()
            except Exception:
                pass
        if self._campaign is not None:
            self._campaign.join(timeout=5)
            self._campaign = None

    @_op("leader")
    def leader(self) -> Leadership | None:
        base = f"{self.root}/election"
        nodes = sorted((n for n in self._client.get_children(base) if LOCK_MARK in n),
                       key=_seq)
        for n in nodes:
            try:
                data = self._client.get(f"{base}/{n}")[0]
            except NoNodeError:
                continue
            return Leadership(data.decode(), _seq(n))
        return None

    def is_leader(self) -> bool:
        return self._token is not None and not self._suspended

    @_op("check leadership")
    def check_leader(self) -> int:
        token, node = self._token, self._node
        if token is None or node is None or self._suspended:
            raise NotLeader("this controller is not the leader (or its session is in doubt)")
        stat = self._client.exists(node)
        if stat is None or stat.ephemeralOwner != self._client.client_id[0]:
            self._token = None
            raise NotLeader("leadership is gone: our election znode no longer exists")
        return token

    def fenced(self, ops: list[Op]) -> None:
        node = self._node
        if self._token is None or node is None or self._suspended:
            raise NotLeader("this controller is not the leader (or its session is in doubt)")
        self._commit(ops, node, [0])

    # -- locks ------------------------------------------------------------------

    @contextmanager
    def lock(self, name: str, timeout_s: float) -> Iterator[None]:
        lk = self._client.Lock(f"{self.root}/locks/{check_key(name)}")
        with zk_errors(f"lock {name}"):
            try:
                got = lk.acquire(timeout=timeout_s)
            except LockTimeout:
                got = False
        if not got:
            raise OperationTimeout(f"lock {name}: still held after {timeout_s:g} s")
        try:
            yield
        finally:
            with zk_errors(f"unlock {name}"):
                lk.release()

    def close(self) -> None:
        if self._closed:
            return
        self.resign()
        self._closed = True
        self._rejoin.set()
        try:
            self._client.stop()
            self._client.close()
        except Exception:
            pass
