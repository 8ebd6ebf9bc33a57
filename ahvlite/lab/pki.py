"""The lab's certificate authority: libvirt TLS certificates for every host.

Each host gets a server certificate (management IP and hostname in subjectAltName,
so clients verify it by address) and a client certificate, so a host's libvirtd can
open a peer-to-peer migration connection to another host and be verified in turn.
The root namespace gets a client certificate of its own. The CA itself is the
cluster's (``ahvlite/pki.py``); this module only lays the files out.
"""

from __future__ import annotations

from pathlib import Path

from ahvlite.pki import CertificateAuthority, Issued, write_secret

__all__ = ["Issued", "LabCA", "install_client_pki", "install_host_pki", "write_secret"]


class LabCA(CertificateAuthority):
    """A self-signed CA whose certificates exist only for one lab."""

    @classmethod
    def create(cls, lab: str) -> LabCA:
        return cls.new(f"ahvlite lab {lab} CA", organization="ahvlite lab")


def install_host_pki(ca: LabCA, pki_root: Path, *, hostname: str, ip: str) -> None:
    """Lay out a host's /etc/pki the way libvirtd and QEMU look for it by default."""
    server = ca.issue(hostname, ips=(ip,), dns=(hostname,), server=True, client=False)
    client = ca.issue(hostname, ips=(ip,), dns=(hostname,), server=False, client=True)
    # QEMU's migration TLS uses one certificate as both server and client.
    both = ca.issue(hostname, ips=(ip,), dns=(hostname,), server=True, client=True)
    (pki_root / "CA").mkdir(parents=True, exist_ok=True)
    (pki_root / "CA" / "cacert.pem").write_bytes(ca.cert_pem)
    libvirt = pki_root / "libvirt"
    (libvirt / "private").mkdir(parents=True, exist_ok=True)
    (libvirt / "servercert.pem").write_bytes(server.cert_pem)
    write_secret(libvirt / "private" / "serverkey.pem", server.key_pem)
    (libvirt / "clientcert.pem").write_bytes(client.cert_pem)
    write_secret(libvirt / "private" / "clientkey.pem", client.key_pem)
    qemu = pki_root / "qemu"
    qemu.mkdir(parents=True, exist_ok=True)
    (qemu / "ca-cert.pem").write_bytes(ca.cert_pem)
    (qemu / "server-cert.pem").write_bytes(both.cert_pem)
    write_secret(qemu / "server-key.pem", both.key_pem)
    (qemu / "client-cert.pem").write_bytes(both.cert_pem)
    write_secret(qemu / "client-key.pem", both.key_pem)


def install_client_pki(ca: LabCA, directory: Path, *, name: str) -> None:
    """The ``pkipath=`` directory a libvirt client in the root namespace uses."""
    client = ca.issue(name, server=False, client=True)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cacert.pem").write_bytes(ca.cert_pem)
    (directory / "clientcert.pem").write_bytes(client.cert_pem)
    write_secret(directory / "clientkey.pem", client.key_pem)
