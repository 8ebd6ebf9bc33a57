"""The lab's certificate authority: libvirt TLS certificates for every host.

Each host gets a server certificate (management IP and hostname in subjectAltName,
so clients verify it by address) and a client certificate, so a host's libvirtd can
open a peer-to-peer migration connection to another host and be verified in turn.
The root namespace gets a client certificate of its own.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=825)


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    # P-256 keeps handshakes fast on 2 cores; GnuTLS (libvirt) and OpenSSL both take it.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ahvlite lab"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


class LabCA:
    """A self-signed CA whose certificates exist only for one lab."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, lab: str) -> LabCA:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        name = _name(f"ahvlite lab {lab} CA")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, directory: Path) -> LabCA:
        cert = x509.load_pem_x509_certificate((directory / "cacert.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "cakey.pem").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(cert, key)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_secret(directory / "cakey.pem", _key_pem(self.key))
        (directory / "cacert.pem").write_bytes(self.cert_pem)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, ips: tuple[str, ...] = (), dns: tuple[str, ...] = (),
              server: bool, client: bool) -> Issued:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # libvirt's certificate sanity check demands keyEncipherment on every
            # leaf certificate, whatever the key type; GnuTLS accepts it on EC keys.
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_encipherment=True, key_cert_sign=False,
                crl_sign=False, content_commitment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def write_secret(path: Path, data: bytes) -> None:
    """Write a private key readable by root only, never briefly world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


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
