"""The cluster's certificate authority: issue TLS certificates, read who they name.

One CA signs every certificate of a cluster: libvirt's and QEMU's on each host, the
controllers' API server certificates, the store's (ZooKeeper's TLS) and the admins'
client certificates (the API's mutual TLS). Keys are EC P-256. The CA lives in a
directory as ``cacert.pem`` and ``cakey.pem`` (the playbook's and the lab's layout).

Being issued by the CA is not being an admin: a host's libvirt client certificate is
from the same CA. Admins are the certificates whose subject carries the organizational
unit :data:`ADMINS_UNIT` (``ahvlite pki issue-client`` issues those); the API serves
only them, and libvirtd accepts exactly the hosts' and the admins' subjects
(:func:`libvirt_dn`, for ``tls_allowed_dn_list``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ahvlite.errors import InvalidSpec, NotFound

VALIDITY = dt.timedelta(days=825)
CA_CERT = "cacert.pem"
CA_KEY = "cakey.pem"
ADMINS_UNIT = "ahvlite-admins"


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


def _name(organization: str, common_name: str, unit: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    if unit is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


class CertificateAuthority:
    """A self-signed CA; the certificates it issues carry its organization name."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def new(cls, common_name: str, *, organization: str = "ahvlite") -> Self:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        name = _name(organization, common_name)
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
    def load(cls, directory: Path) -> Self:
        """The CA in ``directory``; a missing or unreadable one is a clear error."""
        try:
            cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
            key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
        except FileNotFoundError as exc:
            raise NotFound(f"no CA in {directory}: {exc.filename} is missing",
                           hint=f"the CA directory holds {CA_CERT} and {CA_KEY}") from None
        except (ValueError, TypeError) as exc:
            raise InvalidSpec("ca_dir", str(directory),
                              f"PEM {CA_CERT} and an unencrypted PEM {CA_KEY} ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidSpec("ca_dir", str(directory), f"an EC key in {CA_KEY}")
        return cls(cert, key)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_secret(directory / CA_KEY, _key_pem(self.key))
        (directory / CA_CERT).write_bytes(self.cert_pem)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def organization(self) -> str:
        orgs = self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return str(orgs[0].value) if orgs else "ahvlite"

    def subject_of(self, common_name: str, unit: str | None = None) -> x509.Name:
        """The subject :meth:`issue` gives a certificate for ``common_name``."""
        return _name(self.organization, common_name, unit)

    def issue(self, common_name: str, *, ips: tuple[str, ...] = (), dns: tuple[str, ...] = (),
              server: bool, client: bool, validity: dt.timedelta = VALIDITY,
              unit: str | None = None) -> Issued:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        # A negative validity makes an already expired certificate (for tests of refusal).
        not_after = now + validity
        not_before = min(now - dt.timedelta(minutes=5), not_after - dt.timedelta(minutes=5))
        builder = (
            x509.CertificateBuilder()
            .subject_name(self.subject_of(common_name, unit)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
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


def common_name(cert_pem: str | bytes) -> str | None:
    """The subject CN of a PEM certificate, or None if it has none."""
    cns = _cert(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else None


def _cert(cert_pem: str | bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)


def is_admin(cert_pem: str | bytes) -> bool:
    """Whether the certificate's subject names it an admin (:data:`ADMINS_UNIT`)."""
    units = _cert(cert_pem).subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return any(u.value == ADMINS_UNIT for u in units)


# libvirt matches tls_allowed_dn_list entries as shell globs (a subject holding one of
# * ? [ ] would match more than itself) and reads its config strings without escapes.
_UNSAFE_IN_DN = frozenset('*?[]"\\')


def libvirt_dn(name: x509.Name | str | bytes) -> str:
    """A subject as libvirtd sees it (GnuTLS's ``gnutls_x509_crt_get_dn``: attributes in
    the certificate's order, e.g. ``O=ahvlite,CN=h1``), for ``tls_allowed_dn_list``.
    ``name``: a subject, or a PEM certificate."""
    subject = name if isinstance(name, x509.Name) else _cert(name).subject
    dn = ",".join(rdn.rfc4514_string() for rdn in subject.rdns)
    if _UNSAFE_IN_DN & set(dn):
        raise InvalidSpec("subject", dn, "no * ? [ ] \" \\ (libvirt reads the first "
                          "as wildcards, and its config strings have no escapes)")
    return dn


def certificate_problem(cert_pem: bytes, ca_pem: bytes,
                        now: dt.datetime | None = None) -> str | None:
    """Why a peer that trusts the CAs in ``ca_pem`` would refuse this certificate
    (expired, not yet valid, not issued by one of them), or None."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        return f"not a PEM certificate ({exc})"
    if now > cert.not_valid_after_utc:
        return f"it expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if now < cert.not_valid_before_utc:
        return f"it is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return None
        except (ValueError, TypeError, InvalidSignature):
            continue
    return f"it is issued by {cert.issuer.rfc4514_string()}, not by the CA"


def write_secret(path: Path, data: bytes) -> None:
    """Write a private key readable by root only, never briefly world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)
