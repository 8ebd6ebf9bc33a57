"""Opening libvirt connections and translating libvirt errors, once, into ahvlite's."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import ParamSpec, TypeVar
from urllib.parse import urlsplit

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
from ahvlite.virt.events import ensure_event_loop

# Handles other packages may hold and annotate without importing libvirt themselves.
Connection = libvirt.virConnect
DomainHandle = libvirt.virDomain
StoragePool = libvirt.virStoragePool

P = ParamSpec("P")
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
    if code in _UNREACHABLE:
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


ALLOWED_URIS = ("qemu+tls://HOST/system, qemu+ssh://USER@HOST/system, qemu:///system, "
                "qemu+unix:///system, test:///default, or qemu+tcp://HOST/system with "
                "--insecure-tcp")
_DEFAULT_PORTS = {"qemu+tls": 16514, "qemu+tcp": 16509, "qemu+ssh": 22}


@dataclass(frozen=True)
class UriInfo:
    scheme: str
    host: str | None  # None for local URIs
    port: int | None
    remote: bool


def parse_uri(uri: str, *, insecure_tcp: bool = False) -> UriInfo:
    """Check a libvirt URI against what ahvlite accepts; raise InvalidSpec otherwise.

    Plain ``qemu+tcp`` is unauthenticated and unencrypted, so it needs an explicit
    opt-in; everything else remote goes through TLS or SSH.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme
    if scheme in ("qemu", "qemu+unix", "test") and not parts.hostname:
        return UriInfo(scheme, None, None, remote=False)
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise InvalidSpec("uri", uri, ALLOWED_URIS)
    if scheme == "qemu+tcp" and not insecure_tcp:
        raise InvalidSpec("uri", uri, ALLOWED_URIS,
                          hint="qemu+tcp has no authentication or encryption; use "
                               "qemu+tls, or pass --insecure-tcp if you really mean it")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise InvalidSpec("uri", uri, "a port between 1 and 65535") from None
    return UriInfo(scheme, parts.hostname, port, remote=True)


def open_connection(uri: str, *, keepalive_interval_s: int = 5, keepalive_count: int = 3,
                    timeout_s: float = 10, insecure_tcp: bool = False) -> libvirt.virConnect:
    """Open ``uri`` within ``timeout_s``; remote connections get libvirt keepalive.

    libvirt.open itself can block for minutes on an address that drops packets, so
    the TCP port is probed first and the open runs on a worker thread with a deadline.
    """
    info = parse_uri(uri, insecure_tcp=insecure_tcp)
    ensure_event_loop()
    if info.remote:
        assert info.host is not None and info.port is not None
        _probe_tcp(uri, info.host, info.port, timeout_s)
    conn = _open_with_deadline(uri, timeout_s)
    if info.remote:
        with libvirt_errors(f"keepalive on {uri}"):
            conn.setKeepAlive(keepalive_interval_s, keepalive_count)
    return conn


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
def connection(uri: str, *, timeout_s: float = 10,
               insecure_tcp: bool = False) -> Iterator[libvirt.virConnect]:
    conn = open_connection(uri, timeout_s=timeout_s, insecure_tcp=insecure_tcp)
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


def hypervisor_hostname(conn: libvirt.virConnect) -> str:
    with libvirt_errors("read hostname"):
        return conn.getHostname()


def wrap(context: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator form of :func:`libvirt_errors`."""
    def deco(fn: Callable[P, T]) -> Callable[P, T]:
        def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            with libvirt_errors(context):
                return fn(*args, **kwargs)
        inner.__name__ = fn.__name__
        inner.__doc__ = fn.__doc__
        return inner
    return deco
