"""Opening libvirt connections and translating libvirt errors, once, into ahvlite's."""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import libvirt

from ahvlite.errors import (
    AhvliteError,
    Conflict,
    HostUnreachable,
    InvalidSpec,
    NotFound,
    OperationFailed,
    OperationTimeout,
    Unsupported,
)
from ahvlite.spec.uri import check_uri
from ahvlite.virt.events import ensure_event_loop

# Handles other packages may hold and annotate without importing libvirt themselves
# (a domain is held as a virt.guest.Guest).
Connection = libvirt.virConnect
StoragePool = libvirt.virStoragePool

T = TypeVar("T")

# libvirt prints every error to stderr by default; we raise them instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_NOT_FOUND = {libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_NETWORK,
              libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL,
              libvirt.VIR_ERR_NO_NODE_DEVICE}
_UNREACHABLE = {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT,
                libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_INVALID_CONN}
_CONFLICT = {libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_DOM_EXIST,
             libvirt.VIR_ERR_RESOURCE_BUSY}
_INVALID = {libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_XML_DETAIL, libvirt.VIR_ERR_INVALID_ARG,
            libvirt.VIR_ERR_CONFIG_UNSUPPORTED}
_UNSUPPORTED = {libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED}
_TIMEOUT = {libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_ERR_AGENT_UNRESPONSIVE}


def translate(exc: libvirt.libvirtError, context: str) -> AhvliteError:
    """Map a libvirt error to ahvlite's hierarchy, keeping libvirt's own message."""
    code = exc.get_error_code()
    message = f"{context}: {exc.get_error_message() or exc}"
    if code in _NOT_FOUND:
        return NotFound(message)
    if code in _UNREACHABLE or (code == libvirt.VIR_ERR_INTERNAL_ERROR
                                and exc.get_error_domain() == libvirt.VIR_FROM_RPC):
        # The RPC layer's internal errors are a lost peer ("connection closed due to
        # keepalive timeout", "client socket is closed"): the host, not the request.
        return HostUnreachable(message)
    if code in _CONFLICT:
        return Conflict(message)
    if code in _INVALID:
        return InvalidSpec(context, None, exc.get_error_message() or str(exc))
    if code in _UNSUPPORTED:
        return Unsupported(message)
    if code in _TIMEOUT:
        return OperationTimeout(message)
    return OperationFailed(message)


@contextmanager
def libvirt_errors(context: str) -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as exc:
        raise translate(exc, context) from None


def is_alive(conn: libvirt.virConnect) -> bool:
    """Whether the connection is still open (a local check, no round trip)."""
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def open_connection(uri: str, *, keepalive_interval_s: int = 5, keepalive_count: int = 3,
                    timeout_s: float = 10) -> libvirt.virConnect:
    """Open ``uri`` within ``timeout_s``; remote connections get libvirt keepalive.

    Every connection goes through here, so the URI policy (:mod:`ahvlite.spec.uri`) is
    checked here too, whatever the caller checked before. libvirt.open itself can block
    for minutes on an address that drops packets, so the TCP port is probed first and
    the open runs on a worker thread with a deadline.
    """
    info = check_uri(uri)
    ensure_event_loop()
    if info.remote:
        assert info.host is not None and info.port is not None
        _probe_tcp(uri, info.host, info.port, timeout_s)
    conn = _open_with_deadline(uri, timeout_s)
    if info.remote:
        with libvirt_errors(f"keepalive on {uri}"):
            conn.setKeepAlive(keepalive_interval_s, keepalive_count)
    return conn


_SOCKET_PATH = re.compile(r"/[A-Za-z0-9_.+/-]{1,4000}")


def open_local_socket(path: Path, *, timeout_s: float = 10) -> libvirt.virConnect:
    """Open the libvirtd listening on unix socket ``path`` of this machine.

    For ahvlite's own callers that know a daemon by its socket (a lab host's libvirtd,
    a test's private one); no spec or task can name a socket, so this is not part of
    the URI policy.
    """
    text = str(path)
    if not _SOCKET_PATH.fullmatch(text) or os.path.normpath(text) != text:
        raise InvalidSpec("socket", text, "an absolute, normalized path of letters, "
                          "digits, '_', '.', '+', '-' and '/'")
    ensure_event_loop()
    return _open_with_deadline(f"qemu+unix:///system?socket={text}", timeout_s)


def open_test_node(path: Path) -> libvirt.virConnect:
    """libvirt's test driver on a node file of our own (tests: one private fake host
    per file); like :func:`open_local_socket`, never reachable from a spec."""
    text = str(path)
    if not _SOCKET_PATH.fullmatch(text) or os.path.normpath(text) != text:
        raise InvalidSpec("test node file", text, "an absolute, normalized path")
    ensure_event_loop()
    return _open_with_deadline(f"test://{text}", 10)


def _probe_tcp(uri: str, host: str, port: int, timeout_s: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except TimeoutError:
        raise HostUnreachable(f"{host}:{port} did not answer in {timeout_s:.0f} s ({uri})",
                              hint="is the host up and its address right?") from None
    except OSError as exc:
        raise HostUnreachable(f"{host}:{port}: {exc.strerror or exc} ({uri})",
                              hint="is libvirtd (or sshd) listening on that host?") from None


def _open_with_deadline(uri: str, timeout_s: float) -> libvirt.virConnect:
    result: dict[str, object] = {}

    def worker() -> None:
        try:
            result["conn"] = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            result["error"] = translate(exc, f"connect to {uri}")

    thread = threading.Thread(target=worker, name=f"libvirt-open {uri}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        # The open may still finish later; its connection is then dropped by the GC.
        raise OperationTimeout(f"connect to {uri}: no answer in {timeout_s:.0f} s",
                               hint="the host accepts TCP but libvirtd does not respond")
    error = result.get("error")
    if isinstance(error, AhvliteError):
        raise error
    conn = result["conn"]
    assert isinstance(conn, libvirt.virConnect)
    return conn


@contextmanager
def connection(uri: str, *, timeout_s: float = 10) -> Iterator[libvirt.virConnect]:
    conn = open_connection(uri, timeout_s=timeout_s)
    try:
        yield conn
    finally:
        with suppress(libvirt.libvirtError):
            conn.close()


@contextmanager
def local_socket_connection(path: Path, *,
                            timeout_s: float = 10) -> Iterator[libvirt.virConnect]:
    """:func:`open_local_socket` as a context manager."""
    conn = open_local_socket(path, timeout_s=timeout_s)
    try:
        yield conn
    finally:
        with suppress(libvirt.libvirtError):
            conn.close()


def or_none(call: Callable[[], T], *, missing: int, context: str) -> T | None:
    """Run a libvirt lookup: None when the object does not exist (error ``missing``),
    any other libvirt error translated into ahvlite's hierarchy."""
    try:
        return call()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == missing:
            return None
        raise translate(exc, context) from None


def close_quietly(conn: libvirt.virConnect) -> None:
    """Close a connection whose work is done; a failing close has nothing to report."""
    try:
        conn.close()
    except libvirt.libvirtError:
        pass
