"""The embedded store: one SQLite database (WAL) for a single-machine controller.

Leadership is an exclusive ``flock`` on ``DB.leader`` beside the database: the kernel
drops it the moment the holder dies, so a standby on the same machine takes over at
once. Each new leader bumps ``epoch`` (the fencing token) in the same transaction that
names it, and :meth:`SqliteCoordinator.fenced` re-reads the epoch inside its write
transaction. Membership rows expire unless their session refreshes them. The database
records the machine that created it and refuses controllers on any other machine:
``flock`` means nothing across machines, so two leaders could otherwise coexist.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ahvlite.clock import SYSTEM, Clock, file_lock
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
from ahvlite.errors import Conflict, HostUnreachable, NotFound, OperationFailed, OperationTimeout

POLL_S = 0.1

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL,
                               version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS members (name TEXT PRIMARY KEY, data BLOB NOT NULL,
                                    session TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def machine_identity() -> str:
    """This machine: /etc/machine-id where there is one, else the hostname."""
    try:
        return Path("/etc/machine-id").read_text().strip() or socket.gethostname()
    except OSError:
        return socket.gethostname()


def _translate(exc: sqlite3.Error, path: Path) -> Exception:
    text = str(exc)
    if "unable to open" in text:
        return HostUnreachable(f"store {path}: cannot open the database ({text})",
                               hint="check that the directory exists and is writable")
    if "locked" in text or "busy" in text:
        return OperationTimeout(f"store {path}: database stayed locked ({text})")
    return OperationFailed(f"store {path}: {text}")


class SqliteCoordinator:
    """:class:`~ahvlite.controller.coord.api.Coordinator` on one SQLite file."""

    def __init__(self, path: Path, *, session_timeout_s: float = 3.0,
                 machine: str | None = None, clock: Clock = SYSTEM) -> None:
        self.path = path
        self.url = f"sqlite://{path}"
        self.session_timeout_s = session_timeout_s
        # Wall time for member expiry: other processes (other machines' clocks too)
        # read it from the file.
        self.clock = clock
        self.session = uuid.uuid4().hex
        self._machine = machine or machine_identity()
        self._mu = threading.RLock()
        self._closed = threading.Event()
        self._leader_fd: int | None = None
        self._token: int | None = None
        self._identity: str | None = None
        self._campaign: threading.Thread | None = None
        self._resigned = threading.Event()
        self._my_members: set[str] = set()
        if not path.parent.is_dir():
            raise HostUnreachable(f"store {path}: directory {path.parent} does not exist",
                                  hint="create it, or pass another sqlite:///PATH")
        try:
            self._db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            with self._write() as cur:
                row = cur.execute("SELECT value FROM meta WHERE name='machine'").fetchone()
                if row is None:
                    cur.execute("INSERT INTO meta VALUES ('machine', ?)", (self._machine,))
                elif row[0] != self._machine:
                    raise Conflict(
                        f"store {path} belongs to a controller on another machine "
                        f"({row[0]}); an embedded store serves one machine only",
                        hint="run every controller against ZooKeeper (zk://...) instead")
        except sqlite3.Error as exc:
            raise _translate(exc, path) from None
        self._keeper = threading.Thread(target=self._keep_members, daemon=True,
                                        name="sqlite-session")
        self._keeper.start()

    # -- plumbing ---------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        with self._mu:
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                yield cur
                cur.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise _translate(exc, self.path) from None
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[Any]:
        try:
            with self._mu:
                return list(self._db.execute(sql, args).fetchall())
        except sqlite3.Error as exc:
            raise _translate(exc, self.path) from None

    def _apply(self, cur: sqlite3.Cursor, ops: list[Op]) -> None:
        for op in ops:
            check_key(op.key)
            row = cur.execute("SELECT version FROM kv WHERE key=?", (op.key,)).fetchone()
            have = None if row is None else int(row[0])
            if isinstance(op, Check):
                if have != op.version:
                    raise VersionMismatch(f"key {op.key}: version {have}, expected {op.version}")
                continue
            want = op.expected_version
            if want is not None and ((want == MUST_NOT_EXIST and have is not None)
                                     or (want != MUST_NOT_EXIST and have != want)):
                raise VersionMismatch(f"key {op.key}: version {have}, expected {want}")
            if isinstance(op, Put):
                if have is None:
                    cur.execute("INSERT INTO kv VALUES (?, ?, 0)", (op.key, op.value))
                else:
                    cur.execute("UPDATE kv SET value=?, version=version+1 WHERE key=?",
                                (op.value, op.key))
            elif isinstance(op, Delete):
                if have is None:
                    raise NotFound(f"key {op.key} does not exist")
                cur.execute("DELETE FROM kv WHERE key=?", (op.key,))

    def _transact(self, ops: list[Op], *, fenced: bool) -> None:
        with self._write() as cur:
            if fenced:
                self._check_epoch(cur)
            self._apply(cur, ops)

    # -- keys -------------------------------------------------------------------

    def get(self, key: str) -> Versioned | None:
        rows = self._read("SELECT value, version FROM kv WHERE key=?", (check_key(key),))
        return Versioned(bytes(rows[0][0]), int(rows[0][1])) if rows else None

    def put(self, key: str, value: bytes, expected_version: int | None = None) -> int:
        self._transact([Put(key, value, expected_version)], fenced=False)
        got = self.get(key)
        return got.version if got else 0

    def delete(self, key: str, expected_version: int | None = None) -> None:
        self._transact([Delete(key, expected_version)], fenced=False)

    def children(self, prefix: str) -> dict[str, Versioned]:
        base = check_key(prefix) + "/"
        rows = self._read("SELECT key, value, version FROM kv WHERE key > ? AND key < ?",
                          (base, base + "\uffff"))
        out = {}
        for key, value, version in rows:
            rest = str(key)[len(base):]
            if "/" not in rest:
                out[rest] = Versioned(bytes(value), int(version))
        return out

    def names(self, prefix: str) -> list[str]:
        base = check_key(prefix) + "/"
        rows = self._read("SELECT key FROM kv WHERE key > ? AND key < ?",
                          (base, base + "\uffff"))
        rest = (str(k)[len(base):] for (k,) in rows)
        return sorted(n for n in rest if n and "/" not in n)  # as children(): rows only

    def transaction(self, ops: list[Op]) -> None:
        self._transact(ops, fenced=False)

    def watch(self, key: str, callback: Callable[[Versioned | None], None]) -> Callable[[], None]:
        stop = threading.Event()

        def loop() -> None:
            last: Any = object()
            while not stop.is_set() and not self._closed.is_set():
                try:
                    now: Any = self.get(key)
                except Exception:
                    now = last  # a busy database is not a change
                if now != last:
                    last = now
                    callback(now)
                stop.wait(POLL_S)

        threading.Thread(target=loop, daemon=True, name=f"watch-{key}").start()
        return stop.set

    # -- membership -------------------------------------------------------------

    def join(self, member: str, data: bytes) -> None:
        with self._write() as cur:
            row = cur.execute("SELECT session, expires_at FROM members WHERE name=?",
                              (member,)).fetchone()
            if row and row[0] != self.session and row[1] > self.clock.time():
                raise Conflict(f"controller name {member!r} is already in use",
                               hint="give each controller its own --name")
            cur.execute("INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?)",
                        (member, data, self.session, self.clock.time() + self.session_timeout_s))
        self._my_members.add(member)

    def update_member(self, member: str, data: bytes) -> None:
        with self._write() as cur:
            cur.execute("UPDATE members SET data=?, expires_at=? WHERE name=? AND session=?",
                        (data, self.clock.time() + self.session_timeout_s, member, self.session))

    def leave(self, member: str) -> None:
        self._my_members.discard(member)
        with self._write() as cur:
            cur.execute("DELETE FROM members WHERE name=? AND session=?", (member, self.session))

    def ensemble(self, timeout_s: float = 0.5) -> list[MemberState]:
        return [MemberState(self.url, "serving")]  # one file on this host

    def sync(self, key: str) -> None:
        pass  # one database: every read sees every committed write

    def generation(self) -> int:
        return 0  # a local file is never "disconnected"

    def members(self) -> dict[str, bytes]:
        rows = self._read("SELECT name, data FROM members WHERE expires_at > ?",
                          (self.clock.time(),))
        return {str(n): bytes(d) for n, d in rows}

    def _keep_members(self) -> None:
        while not self._closed.wait(self.session_timeout_s / 3):
            try:
                with self._write() as cur:
                    cur.execute("UPDATE members SET expires_at=? WHERE session=?",
                                (self.clock.time() + self.session_timeout_s, self.session))
                    cur.execute("DELETE FROM members WHERE expires_at < ?",
                                (self.clock.time() - 60,))
            except Exception:  # the next round retries; members() shows the expiry
                pass

    # -- leadership -------------------------------------------------------------

    @property
    def _leader_file(self) -> Path:
        return self.path.with_name(self.path.name + ".leader")

    def campaign(self, identity: str, on_elected: Callable[[int], None],
                 on_lost: Callable[[str], None]) -> None:
        self._identity = identity
        self._resigned.clear()

        def loop() -> None:
            fd = os.open(self._leader_file, os.O_RDWR | os.O_CREAT, 0o600)
            while not self._resigned.is_set() and not self._closed.is_set():
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    self._resigned.wait(POLL_S)
                    continue
                with self._write() as cur:
                    row = cur.execute("SELECT value FROM meta WHERE name='epoch'").fetchone()
                    token = int(row[0]) + 1 if row else 1
                    cur.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (str(token),))
                    cur.execute("INSERT OR REPLACE INTO meta VALUES ('leader', ?)", (identity,))
                self._leader_fd, self._token = fd, token
                on_elected(token)
                self._resigned.wait()
                self._token = None
                fcntl.flock(fd, fcntl.LOCK_UN)
                on_lost("resigned")
                break
            os.close(fd)
            self._leader_fd = None

        self._campaign = threading.Thread(target=loop, daemon=True, name="sqlite-election")
        self._campaign.start()

    def resign(self) -> None:
        self._token = None
        self._resigned.set()
        if self._campaign is not None:
            self._campaign.join(timeout=5)
            self._campaign = None

    def leader(self) -> Leadership | None:
        fd = os.open(self._leader_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                rows = self._read("SELECT name, value FROM meta WHERE name IN ('leader','epoch')")
                meta = {str(k): str(v) for k, v in rows}
                return Leadership(meta.get("leader", "?"), int(meta.get("epoch", "0")))
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def is_leader(self) -> bool:
        return self._token is not None

    def check_leader(self) -> int:
        token = self._token
        if token is None:
            raise NotLeader("this controller is not the leader")
        return token

    def _check_epoch(self, cur: sqlite3.Cursor) -> None:
        token = self.check_leader()
        row = cur.execute("SELECT value FROM meta WHERE name='epoch'").fetchone()
        if row is None or int(row[0]) != token:
            self._token = None
            raise NotLeader(f"leadership moved on (epoch {row and row[0]}, ours {token})")

    def fenced(self, ops: list[Op]) -> None:
        self._transact(ops, fenced=True)

    # -- locks ------------------------------------------------------------------

    @contextmanager
    def lock(self, name: str, timeout_s: float) -> Iterator[None]:
        check_key(name)
        d = self.path.with_name(self.path.name + ".locks")
        d.mkdir(exist_ok=True)
        with file_lock(d / name.replace("/", "_"), timeout_s, what=f"lock {name}",
                       interval_s=POLL_S / 2, clock=self.clock):
            yield

    def close(self) -> None:
        if self._closed.is_set():
            return
        self.resign()
        for m in list(self._my_members):
            try:
                self.leave(m)
            except Exception:
                pass
        self._closed.set()
        with self._mu:
            self._db.close()
