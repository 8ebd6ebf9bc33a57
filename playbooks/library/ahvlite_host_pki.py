#!/usr/bin/python
"""Ansible module: a host's TLS certificates, issued by ahvlite's CA.

Runs on the controller machine (``delegate_to: localhost``). ``dest_dir`` is laid out
like a host's /etc/pki (CA/, libvirt/, qemu/: libvirtd and QEMU's migration TLS);
``ahvlite_dir`` like its /etc/ahvlite/pki (the API's server certificate, the store
client's and the ZooKeeper member's); the play copies them to the host. Existing
certificates are kept while they are signed by the CA, valid, name the host (its
subject, its management address), so a second run changes nothing. The CA itself is
created on first use when ``create_ca`` is set.

It also returns ``allowed_dns``: libvirtd's ``tls_allowed_dn_list``, the subjects of
every peer's client certificate and of the admin's (``client_dir``), so libvirtd
admits the cluster's hosts and admins and no other certificate of the CA.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: ahvlite_host_pki
short_description: Issue (or keep) a host's TLS certificates from ahvlite's CA
options:
  ca_dir:
    description: Directory with cacert.pem and cakey.pem.
    type: path
    required: true
  dest_dir:
    description: Directory laid out like the host's /etc/pki.
    type: path
    required: true
  common_name:
    description: Certificate common name (the host's name).
    type: str
    required: true
  peers:
    description: >-
      Every host's common name, this one's included: whose client certificates libvirtd
      admits (allowed_dns).
    type: list
    elements: str
    default: []
  ahvlite_dir:
    description: Directory laid out like the host's /etc/ahvlite/pki.
    type: path
  ips:
    description: Addresses clients use (subjectAltName).
    type: list
    elements: str
    required: true
  create_ca:
    description: Create the CA in ca_dir when it does not exist.
    type: bool
    default: false
  ca_name:
    description: Name in the CA certificate when one is created (the cluster name).
    type: str
    default: ahvlite
  client_dir:
    description: >-
      Where the controller machine's own client certificate lives (the pkipath of
      qemu+tls URIs and the OVSDB TLS client); issued when missing or not from the CA.
    type: path
"""

import datetime as dt  # noqa: E402 - ansible wants DOCUMENTATION first
import ipaddress  # noqa: E402 - ansible wants DOCUMENTATION first
from pathlib import Path  # noqa: E402 - ansible wants DOCUMENTATION first

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 - ansible wants DOCUMENTATION first

FILES = ("CA/cacert.pem", "libvirt/servercert.pem", "libvirt/private/serverkey.pem",
         "libvirt/clientcert.pem", "libvirt/private/clientkey.pem", "qemu/ca-cert.pem",
         "qemu/server-cert.pem", "qemu/server-key.pem", "qemu/client-cert.pem",
         "qemu/client-key.pem")


def _cert_problem(ca, path: Path, ips: list[str], subject=None) -> str | None:
    """Why the certificate at ``path`` will not do (not from the CA, expiring, not
    naming ``ips`` or ``subject``), or None."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        cert.verify_directly_issued_by(ca.cert)
    except Exception as exc:  # signature, issuer name or algorithm mismatch
        return f"{path.name} is not issued by the cluster CA ({exc})"
    if cert.not_valid_after_utc < dt.datetime.now(dt.UTC) + dt.timedelta(days=30):
        return f"{path.name} expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    if subject is not None and cert.subject != subject:
        return f"{path.name} names {cert.subject.rfc4514_string()}, not {subject.rfc4514_string()}"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        have = {str(a) for a in san.value.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        have = set()
    want = {str(ipaddress.ip_address(i)) for i in ips}
    if not want <= have:
        return f"{path.name} names {sorted(have)}, not {sorted(want)}"
    return None


def _problem(ca, dest: Path, ips: list[str], common_name: str) -> str | None:
    """Why the certificates in ``dest`` must be (re)issued, or None if they are fine."""
    missing = [f for f in FILES if not (dest / f).exists()]
    if missing:
        return f"missing {', '.join(missing)}"
    for name in ("CA/cacert.pem", "qemu/ca-cert.pem"):
        if (dest / name).read_bytes() != ca.cert_pem:
            return f"{name} differs from the cluster CA"
    for name in ("libvirt/servercert.pem", "libvirt/clientcert.pem", "qemu/server-cert.pem"):
        # libvirtd admits peers by the subject of their client certificate.
        subject = ca.subject_of(common_name) if name == "libvirt/clientcert.pem" else None
        why = _cert_problem(ca, dest / name, ips, subject)
        if why:
            return f"{name}: {why}"
    return None


def _ahvlite_problem(ca, dest: Path, ips: list[str]) -> str | None:
    """Why /etc/ahvlite/pki's files in ``dest`` must be (re)issued, or None."""
    from ahvlite.lab.pki import AHVLITE_PKI_FILES

    missing = [f for f in AHVLITE_PKI_FILES if not (dest / f).exists()]
    if missing:
        return f"missing {', '.join(missing)}"
    for name in ("ca.pem", "zk/ca.pem", "zk-server/ca.pem"):
        if (dest / name).read_bytes() != ca.cert_pem:
            return f"{name} differs from the cluster CA"
    for name, want_ips in (("api.pem", ips), ("zk/client.pem", []),
                           ("zk-server/server.pem", ips)):
        why = _cert_problem(ca, dest / name, want_ips)
        if why:
            return f"{name}: {why}"
    return None


def _client_problem(ca, client: Path) -> str | None:
    from ahvlite.pki import is_admin

    names = ("cacert.pem", "clientcert.pem", "clientkey.pem")
    if not all((client / n).exists() for n in names):
        return "missing"
    why = _cert_problem(ca, client / "clientcert.pem", [])
    if why:
        return why
    if not is_admin((client / "clientcert.pem").read_bytes()):
        return "not an admin's certificate (no OU=ahvlite-admins)"
    return None


def main() -> None:
    module = AnsibleModule(
        argument_spec={"ca_dir": {"type": "path", "required": True},
                       "dest_dir": {"type": "path", "required": True},
                       "common_name": {"type": "str", "required": True},
                       "ips": {"type": "list", "elements": "str", "required": True},
                       "create_ca": {"type": "bool", "default": False},
                       "ca_name": {"type": "str", "default": "ahvlite"},
                       "client_dir": {"type": "path", "required": False},
                       "peers": {"type": "list", "elements": "str", "default": []},
                       "ahvlite_dir": {"type": "path", "required": False}},
        supports_check_mode=True)
    try:
        from ahvlite.errors import AhvliteError
        from ahvlite.lab.pki import LabCA, install_ahvlite_pki, install_client_pki, install_host_pki
        from ahvlite.pki import libvirt_dn
    except ImportError as exc:
        module.fail_json(msg=f"ahvlite is not importable ({exc}); run the playbook with "
                             "ahvlite's ansible-playbook")
        return
    p = module.params
    ca_dir, dest = Path(p["ca_dir"]), Path(p["dest_dir"])
    changed_ca = False
    if not (ca_dir / "cakey.pem").exists():
        if not p["create_ca"]:
            module.fail_json(msg=f"no CA in {ca_dir} (cacert.pem + cakey.pem)")
            return
        if module.check_mode:
            module.exit_json(changed=True, reason=f"would create the CA in {ca_dir}",
                             allowed_dns=[])
            return
        LabCA.create(p["ca_name"]).save(ca_dir)
        changed_ca = True
    ca = LabCA.load(ca_dir)
    reasons = []
    client = Path(p["client_dir"]) if p["client_dir"] else None
    if client is not None and _client_problem(ca, client):
        reasons.append(f"controller client certificate in {client}: {_client_problem(ca, client)}")
        if not module.check_mode:
            install_client_pki(ca, client, name=f"ahvlite-{p['ca_name']}-controller")
    reason = _problem(ca, dest, p["ips"], p["common_name"])
    if reason is not None:
        reasons.append(reason)
        if not module.check_mode:
            install_host_pki(ca, dest, hostname=p["common_name"], ip=p["ips"][0])
    ahvlite_dir = Path(p["ahvlite_dir"]) if p["ahvlite_dir"] else None
    if ahvlite_dir is not None:
        reason = _ahvlite_problem(ca, ahvlite_dir, p["ips"])
        if reason is not None:
            reasons.append(f"{ahvlite_dir}: {reason}")
            if not module.check_mode:
                install_ahvlite_pki(ca, ahvlite_dir, hostname=p["common_name"],
                                    ip=p["ips"][0])
    try:
        allowed = [libvirt_dn(ca.subject_of(peer)) for peer in p["peers"]]
        cert = client / "clientcert.pem" if client is not None else None
        if cert is not None and cert.exists():
            allowed.append(libvirt_dn(cert.read_bytes()))
    except AhvliteError as exc:
        module.fail_json(msg=exc.message)
        return
    module.exit_json(changed=changed_ca or bool(reasons),
                     reason="; ".join(reasons) or "certificates valid", allowed_dns=allowed)


if __name__ == "__main__":
    main()
