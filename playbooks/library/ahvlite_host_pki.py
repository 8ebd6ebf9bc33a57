#!/usr/bin/python
"""Ansible module: a host's libvirt/QEMU TLS certificates, issued by ahvlite's CA.

Runs on the controller machine (``delegate_to: localhost``). ``dest_dir`` is laid out
like a host's /etc/pki (CA/, libvirt/, qemu/); the play copies it to the host. Existing
certificates are kept while they are signed by the CA, valid, and name the host's
management address, so a second run changes nothing. The CA itself is created on
first use when ``create_ca`` is set.
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
         "libvirt/clientcert.pem", "libvirt/private/clientkey.pem")


def _problem(ca, dest: Path, ips: list[str]) -> str | None:
    """Why the certificates in ``dest`` must be (re)issued, or None if they are fine."""
    from cryptography import x509

    missing = [f for f in FILES if not (dest / f).exists()]
    if missing:
        return f"missing {', '.join(missing)}"
    if (dest / "CA/cacert.pem").read_bytes() != ca.cert_pem:
        return "CA certificate differs from the cluster CA"
    now = dt.datetime.now(dt.UTC)
    for name in ("libvirt/servercert.pem", "libvirt/clientcert.pem"):
        cert = x509.load_pem_x509_certificate((dest / name).read_bytes())
        try:
            cert.verify_directly_issued_by(ca.cert)
        except Exception as exc:  # signature, issuer name or algorithm mismatch
            return f"{name} is not issued by the cluster CA ({exc})"
        if cert.not_valid_after_utc < now + dt.timedelta(days=30):
            return f"{name} expires on {cert.not_valid_after_utc:%Y-%m-%d}"
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            have = {str(a) for a in san.value.get_values_for_type(x509.IPAddress)}
        except x509.ExtensionNotFound:
            have = set()
        want = {str(ipaddress.ip_address(i)) for i in ips}
        if not want <= have:
            return f"{name} names {sorted(have)}, not {sorted(want)}"
    return None


def _client_problem(ca, client: Path) -> str | None:
    from cryptography import x509

    names = ("cacert.pem", "clientcert.pem", "clientkey.pem")
    if not all((client / n).exists() for n in names):
        return "missing"
    cert = x509.load_pem_x509_certificate((client / "clientcert.pem").read_bytes())
    try:
        cert.verify_directly_issued_by(ca.cert)
    except Exception as exc:  # signature, issuer name or algorithm mismatch
        return f"not issued by the cluster CA ({exc})"
    return None


def main() -> None:
    module = AnsibleModule(
        argument_spec={"ca_dir": {"type": "path", "required": True},
                       "dest_dir": {"type": "path", "required": True},
                       "common_name": {"type": "str", "required": True},
                       "ips": {"type": "list", "elements": "str", "required": True},
                       "create_ca": {"type": "bool", "default": False},
                       "ca_name": {"type": "str", "default": "ahvlite"},
                       "client_dir": {"type": "path", "required": False}},
        supports_check_mode=True)
    try:
        from ahvlite.lab.pki import LabCA, install_client_pki, install_host_pki
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
            module.exit_json(changed=True, reason=f"would create the CA in {ca_dir}")
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
    reason = _problem(ca, dest, p["ips"])
    if reason is not None:
        reasons.append(reason)
        if not module.check_mode:
            install_host_pki(ca, dest, hostname=p["common_name"], ip=p["ips"][0])
    module.exit_json(changed=changed_ca or bool(reasons),
                     reason="; ".join(reasons) or "certificates valid")


if __name__ == "__main__":
    main()
