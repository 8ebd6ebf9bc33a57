"""Opening libvirt connections and translating libvirt errors, once, into ahvlite's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import ParamSpec, TypeVar

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


def open_connection(uri: str, *, keepalive_interval_s: int = 5,
                    keepalive_count: int = 3) -> libvirt.virConnect:
    """Open ``uri``; remote connections get libvirt keepalive so a dead host shows fast."""
    ensure_event_loop()
    with libvirt_errors(f"connect to {uri}"):
        conn = libvirt.open(uri)
        if "://" in uri and not uri.split("://", 1)[1].startswith("/"):
            conn.setKeepAlive(keepalive_interval_s, keepalive_count)
    return conn


@contextmanager
def connection(uri: str) -> Iterator[libvirt.virConnect]:
    conn = open_connection(uri)
    try:
        yield conn
    finally:
        with suppress(libvirt.libvirtError):
            conn.close()


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
