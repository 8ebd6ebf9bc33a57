"""Connections to a host's OVSDB (ovsdbapp over python-ovs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.open_vswitch import impl_idl

from ahvlite.errors import HostUnreachable

DEFAULT_TIMEOUT_S = 10


@contextmanager
def ovsdb(remote: str, *, timeout_s: int = DEFAULT_TIMEOUT_S) -> Iterator[impl_idl.OvsdbIdl]:
    """An ovsdbapp API bound to ``remote`` (``unix:/path`` or ``ssl:ip:port``)."""
    try:
        idl = connection.OvsdbIdl.from_server(remote, "Open_vSwitch")
        conn = connection.Connection(idl=idl, timeout=timeout_s)
        # ovsdbapp keeps the connection in a class attribute (one OVSDB per process);
        # a subclass per connection lets one process talk to many hosts.
        per_host = type("HostOvsdbIdl", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
        api = per_host(conn, start=True)
    except Exception as exc:  # ovsdbapp raises bare Exception subclasses of many kinds
        raise HostUnreachable(f"cannot reach OVSDB at {remote}: {exc}",
                              hint="is ovsdb-server running on that host?") from None
    try:
        yield api
    finally:
        conn.stop()
