"""Certificates of a cluster's hosts, laid out where their programs look for them.

Each host gets a libvirt server certificate (management IP and hostname in
subjectAltName, so clients verify it by address) and a client certificate, so a host's
libvirtd can open a peer-to-peer migration connection to another host and be verified
in turn; QEMU's migration TLS certificates (/etc/pki/qemu); and ahvlite's own: the
API's server certificate, the store client's certificate and the ZooKeeper member's
(/etc/ahvlite/pki, :func:`install_ahvlite_pki`). The root namespace of a lab (or the
machine that runs the playbook) gets an admin client certificate. The CA itself is the
cluster's (``ahvlite/pki.py``); this module only lays the files out. Used by the lab
and by the playbook's ``ahvlite_host_pki`` module.
"""

from __future__ import annotations

from pathlib import Path

from ahvlite.controller.coord.url import TLS_CA, TLS_CERT, TLS_KEY
from ahvlite.pki import ADMINS_UNIT, CertificateAuthority, Issued, libvirt_dn, write_secret

__all__ = ["AHVLITE_PKI_FILES", "Issued", "LabCA", "allowed_dns", "install_ahvlite_pki",
           "install_client_pki", "install_host_pki", "install_store_client", "write_secret"]

# Under a host's /etc/ahvlite/pki (relative paths): the cluster CA and the API's server
# certificate ($AHVLITE_API_CA, _CERT, _KEY), the store client's TLS directory
# ($AHVLITE_STORE_TLS_DIR = zk/) and the ZooKeeper member's key store and trust store
# (zk-server/: the playbook copies them to ZooKeeper's own directory).
API_CA, API_CERT, API_KEY = "ca.pem", "api.pem", "api-key.pem"
STORE_DIR = "zk"
ZK_SERVER_DIR = "zk-server"
ZK_KEYSTORE, ZK_TRUSTSTORE = "server.pem", "ca.pem"
AHVLITE_PKI_FILES = (API_CA, API_CERT, API_KEY, f"{STORE_DIR}/{TLS_CA}",
                     f"{STORE_DIR}/{TLS_CERT}", f"{STORE_DIR}/{TLS_KEY}",
                     f"{ZK_SERVER_DIR}/{ZK_KEYSTORE}", f"{ZK_SERVER_DIR}/{ZK_TRUSTSTORE}")


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


def install_ahvlite_pki(ca: CertificateAuthority, root: Path, *, hostname: str,
                        ip: str) -> None:
    """Lay out a host's /etc/ahvlite/pki (see :data:`AHVLITE_PKI_FILES`)."""
    api = ca.issue(hostname, ips=(ip,), dns=(hostname,), server=True, client=False)
    root.mkdir(parents=True, exist_ok=True)
    (root / API_CA).write_bytes(ca.cert_pem)
    (root / API_CERT).write_bytes(api.cert_pem)
    write_secret(root / API_KEY, api.key_pem)
    install_store_client(ca, root / STORE_DIR, name=hostname)
    # A member is a server to clients and to its peers, and a client of its peers
    # (quorum TLS): both usages, its address in subjectAltName.
    member = ca.issue(hostname, ips=(ip,), dns=(hostname,), server=True, client=True)
    write_secret(root / ZK_SERVER_DIR / ZK_KEYSTORE, member.key_pem + member.cert_pem)
    (root / ZK_SERVER_DIR / ZK_TRUSTSTORE).write_bytes(ca.cert_pem)


def install_store_client(ca: CertificateAuthority, directory: Path, *, name: str) -> None:
    """A store client's TLS directory ($AHVLITE_STORE_TLS_DIR)."""
    client = ca.issue(name, server=False, client=True)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / TLS_CA).write_bytes(ca.cert_pem)
    (directory / TLS_CERT).write_bytes(client.cert_pem)
    write_secret(directory / TLS_KEY, client.key_pem)


def install_client_pki(ca: CertificateAuthority, directory: Path, *, name: str,
                       admin: bool = True) -> None:
    """A libvirt client's ``pkipath=`` directory: an admin's (the lab's root namespace,
    the machine that runs the playbook; an API admin too), or with ``admin`` false a
    host's own client identity (what its libvirtd presents to its peers)."""
    client = ca.issue(name, server=False, client=True, unit=ADMINS_UNIT if admin else None)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cacert.pem").write_bytes(ca.cert_pem)
    (directory / "clientcert.pem").write_bytes(client.cert_pem)
    write_secret(directory / "clientkey.pem", client.key_pem)


def allowed_dns(ca: CertificateAuthority, hosts: list[str], admins: list[str]) -> list[str]:
    """libvirtd's ``tls_allowed_dn_list``: the subjects of the hosts' client certificates
    (:func:`install_host_pki`) and of the admins' (:func:`install_client_pki`)."""
    return [libvirt_dn(ca.subject_of(h)) for h in hosts] + \
        [libvirt_dn(ca.subject_of(a, ADMINS_UNIT)) for a in admins]
