"""Connections to a host's OVSDB (ovsdbapp over python-ovs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ovs.stream import Stream
from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.open_vswitch import impl_idl

from ahvlite.errors import HostUnreachable, InvalidSpec

DEFAULT_TIMEOUT_S = 10


@dataclass(frozen=True)
class OvsdbPki:
    """Mutual TLS for ``ssl:`` remotes: our client certificate, and the CA we trust."""

    ca_cert: Path
    certificate: Path
    private_key: Path


def _use_pki(remote: str, pki: OvsdbPki | None) -> None:
    if not remote.startswith("ssl:"):
        return
    if pki is None:
        raise InvalidSpec("ovsdb.remote", remote,
                          "a unix: remote, or ssl: with ca_cert, certificate and private_key")
    for path in (pki.ca_cert, pki.certificate, pki.private_key):
        if not path.is_file():
            raise InvalidSpec("ovsdb PKI file", str(path), "an existing PEM file")
    # python-ovs keeps TLS files process-wide; every ssl: connection after this uses them.
    Stream.ssl_set_ca_cert_file(str(pki.ca_cert))
    Stream.ssl_set_certificate_file(str(pki.certificate))
    Stream.ssl_set_private_key_file(str(pki.private_key))


@contextmanager
def ovsdb(remote: str, *, pki: OvsdbPki | None = None,
          timeout_s: int = DEFAULT_TIMEOUT_S) -> Iterator[impl_idl.OvsdbIdl]:
    """An ovsdbapp API bound to ``remote`` (``unix:/path`` or ``ssl:ip:port``)."""
    _use_pki(remote, pki)
    try:
        idl = connection.OvsdbIdl.from_server(remote, "Open_vSwitch")
        conn = connection.Connection(idl=idl, timeout=timeout_s)
        # ovsdbapp keeps the connection in a class attribute (one OVSDB per process);
        # a subclass per connection lets one process talk to many hosts.
        per_host = type("HostOvsdbIdl", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
        api = per_host(conn, start=True)
    except Exception as exc:  # ovsdbapp raises bare Exception subclasses of many kinds
        raise HostUnreachable(f"cannot reach OVSDB at {remote}: {exc}",
                              hint="is ovsdb-server running on that host and listening "
                                   "there (Manager target pssl:6640:ADDR)?") from None
    try:
        yield api
    finally:
        conn.stop()
