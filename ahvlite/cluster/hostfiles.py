"""Files a host entry names are files on the CONTROLLERS: which ones may be named.

A host entry in the cluster spec names files: its SSH key and known_hosts, its OVSDB
client certificates, and a ``pkipath`` directory in a ``qemu+tls`` URI. The spec lives
in the store and the leader acts on it, so these are paths on every controller that
may lead, never on the admin's machine. The spec comes from outside the controller
(a cluster file, an API request), so a path may only point into what the cluster owns:
the roots below (and extra roots the controller's own environment names, e.g. a
lab's state directory). Everything else is refused, naming the field and the path.

What provisioning puts on each controller host (the defaults ``host add`` fills in):

* ``/etc/ahvlite/ssh/id_ed25519`` and ``/etc/ahvlite/ssh/known_hosts``: the
  controllers' own SSH identity and the host keys they vouch for (trust on first use
  records a new key in the leader's file);
* ``/etc/pki/CA/cacert.pem``, ``/etc/pki/libvirt/clientcert.pem`` and
  ``/etc/pki/libvirt/private/clientkey.pem``: the host's client certificate from the
  cluster CA (libvirt TLS installs them); OVSDB over ``ssl:`` uses the same ones.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from pathlib import PurePosixPath

from ahvlite.errors import InvalidSpec
from ahvlite.spec.cluster import HostSpec

ROOTS_ENV = "AHVLITE_HOST_FILE_ROOTS"  # extra roots, ':'-separated (controller's env)
DEFAULT_ROOTS = ("/etc/ahvlite", "/etc/pki", "/var/lib/ahvlite")
SSH_KEY = "/etc/ahvlite/ssh/id_ed25519"
KNOWN_HOSTS = "/etc/ahvlite/ssh/known_hosts"
OVSDB_CA = "/etc/pki/CA/cacert.pem"
OVSDB_CERT = "/etc/pki/libvirt/clientcert.pem"
OVSDB_KEY = "/etc/pki/libvirt/private/clientkey.pem"


def roots(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The directories host entries may name files in, on this controller."""
    env = os.environ if env is None else env
    extra = [r for r in env.get(ROOTS_ENV, "").split(":") if r]
    return (*DEFAULT_ROOTS, *(r.rstrip("/") or "/" for r in extra if r.startswith("/")))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_path(field: str, value: str, allowed: tuple[str, ...]) -> None:
    """``value`` is absolute, normalized and inside one of ``allowed`` (the link
    target too, where the file exists: a link out of a root counts as outside)."""
    why = f"an absolute path on the controllers under {', '.join(allowed)}"
    if (not value.startswith("/") or posixpath.normpath(value) != value
            or "\x00" in value):
        raise InvalidSpec(field, value, why, hint="no '..', '.', '//' or trailing '/'")
    real = os.path.realpath(value)
    if not any(_under(value, r) for r in allowed) or not any(_under(real, r)
                                                            for r in allowed):
        raise InvalidSpec(field, value, why,
                          hint=f"controllers may name other directories in ${ROOTS_ENV}")


def named_files(host: HostSpec) -> list[tuple[str, str]]:
    """Every (field, path) of a controller file the host entry names."""
    named: list[tuple[str, object]] = []
    if host.ssh is not None:
        named += [("ssh.key", host.ssh.key), ("ssh.known_hosts", host.ssh.known_hosts)]
    if host.ovsdb is not None:
        named += [(f"ovsdb.{f}", getattr(host.ovsdb, f))
                  for f in ("ca_cert", "certificate", "private_key")]
    _, sep, pkipath = host.uri.partition("?pkipath=")
    if sep:
        named.append(("uri pkipath", pkipath))
    return [(field, str(path)) for field, path in named if path is not None]


def check_host_files(host: HostSpec, allowed: tuple[str, ...] | None = None, *,
                     prefix: str = "") -> None:
    """Every file ``host`` names is one the controllers may use (InvalidSpec if not)."""
    allowed = roots() if allowed is None else allowed
    for field, path in named_files(host):
        check_path(f"{prefix}{field}", path, allowed)


def check_readable(field: str, path: str | PurePosixPath | None) -> None:
    """The controller has the file (on the leader, before it is relied on)."""
    if path is not None and not os.access(str(path), os.R_OK):
        raise InvalidSpec(field, str(path), "a readable file on the controllers",
                          hint="provisioning puts the controllers' own key and "
                               "certificates there (see `ahvlite host provision`)")
