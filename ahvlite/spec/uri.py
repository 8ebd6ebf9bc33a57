"""The one libvirt URI policy: which URIs a cluster (and anything it drives) may name.

A libvirt URI is more than an address: its query keys choose programs and files
(``command=`` runs any program, ``netcat=``/``socket=`` pick what runs on the far side,
``keyfile=``/``known_hosts=``/``no_verify=1`` weaken or redirect authentication). A URI
may come from a cluster file or a record in the store, so only these forms pass:

* ``qemu:///system`` and ``qemu:///session`` (this machine);
* ``qemu+tls://HOST[:PORT]/system`` with at most ``pkipath=/ABSOLUTE/DIR`` as query;
* ``qemu+ssh://[USER@]HOST[:PORT]/system`` with no query (ssh checks known hosts);
* ``test:///default`` (libvirt's in-process test driver).

The whole URI is matched by one expression rather than split by ``urllib``: libvirt's
own parser also splits the query at ``;`` and unescapes ``%XX``, so anything this module
did not read exactly as libvirt will is refused outright.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from ahvlite.errors import InvalidSpec

ALLOWED_URIS = ("qemu:///system, qemu:///session, qemu+tls://HOST[:PORT]/system "
                "(query: only pkipath=/ABSOLUTE/DIR), qemu+ssh://[USER@]HOST[:PORT]/system "
                "(no query: ssh verifies known hosts), or test:///default")
LOCAL_URIS = ("qemu:///system", "qemu:///session", "test:///default")
DEFAULT_PORTS = {"qemu+tls": 16514, "qemu+ssh": 22}

_HOST = r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
_REMOTE = re.compile(
    r"(?P<scheme>qemu\+tls|qemu\+ssh)://(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})@)?"
    + _HOST + r"(?::(?P<port>[0-9]{1,5}))?/system(?:\?(?P<query>.*))?")
_PKIPATH = re.compile(r"pkipath=(?P<dir>/[A-Za-z0-9_.+/-]{0,4000})")


@dataclass(frozen=True)
class LibvirtUri:
    """A URI that passed :func:`check_uri`."""

    uri: str
    scheme: str
    host: str | None  # None for local URIs
    port: int | None
    remote: bool


def check_uri(uri: object, field: str = "uri") -> LibvirtUri:
    """``uri`` if it is one of the allowed forms, else InvalidSpec naming ``field``."""
    if not isinstance(uri, str):
        raise InvalidSpec(field, uri, ALLOWED_URIS)
    if uri in LOCAL_URIS:
        return LibvirtUri(uri, uri.split(":", 1)[0], None, None, remote=False)
    m = _REMOTE.fullmatch(uri)
    if m is None:
        raise InvalidSpec(field, uri, ALLOWED_URIS,
                          hint="qemu+tcp is neither authenticated nor encrypted: use "
                               "qemu+tls" if uri.startswith("qemu+tcp:") else None)
    scheme, query = m["scheme"], m["query"]
    if scheme == "qemu+tls" and m["user"] is not None:
        raise InvalidSpec(field, uri, ALLOWED_URIS, hint="qemu+tls takes no USER@")
    if query is not None:
        if scheme == "qemu+ssh":
            raise InvalidSpec(field, uri, ALLOWED_URIS,
                              hint="qemu+ssh takes no query keys (command, keyfile, "
                                   "no_verify, ...): configure ssh itself instead")
        pki = _PKIPATH.fullmatch(query)
        directory = pki["dir"] if pki else ""
        if not pki or posixpath.normpath(directory) != directory:
            raise InvalidSpec(field, uri, ALLOWED_URIS,
                              hint="the only query key is pkipath=/ABSOLUTE/DIR (normalized: "
                                   "no '..', '.', '//' or trailing '/')")
    port = int(m["port"]) if m["port"] else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise InvalidSpec(field, uri, ALLOWED_URIS, hint="PORT is from 1 to 65535")
    host = m["host"].strip("[]")
    return LibvirtUri(uri, scheme, host, port, remote=True)
