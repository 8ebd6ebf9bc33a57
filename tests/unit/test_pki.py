"""The lab CA issues certificates libvirt accepts: chain, SAN, key usage."""

from __future__ import annotations

import ipaddress
import stat

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ahvlite.lab.pki import LabCA, install_client_pki, install_host_pki


def _load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_host_certificates_chain_to_the_ca_and_name_the_management_ip(tmp_path):
    ca = LabCA.create("t")
    install_host_pki(ca, tmp_path, hostname="t-h1", ip="10.9.0.2")
    server = _load(tmp_path / "libvirt/servercert.pem")
    client = _load(tmp_path / "libvirt/clientcert.pem")
    for cert in (server, client):
        cert.verify_directly_issued_by(ca.cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert ipaddress.ip_address("10.9.0.2") in san.get_values_for_type(x509.IPAddress)
        assert "t-h1" in san.get_values_for_type(x509.DNSName)
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        # libvirt refuses certificates without these two bits.
        assert usage.digital_signature and usage.key_encipherment
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_private_keys_are_root_only_and_match_their_certificates(tmp_path):
    ca = LabCA.create("t")
    install_client_pki(ca, tmp_path, name="c")
    key_path = tmp_path / "clientkey.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = _load(tmp_path / "clientcert.pem")
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()


def test_ca_survives_save_and_load(tmp_path):
    ca = LabCA.create("t")
    ca.save(tmp_path)
    again = LabCA.load(tmp_path)
    issued = again.issue("x", server=True, client=False)
    x509.load_pem_x509_certificate(issued.cert_pem).verify_directly_issued_by(ca.cert)
