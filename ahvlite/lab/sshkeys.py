"""SSH keys for the lab: one user key for ahvlite and ansible, one host key per host.

Host keys are recorded in the lab's known_hosts, so clients verify hosts instead of
accepting whatever answers.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ahvlite.lab.pki import write_secret


def make_keypair(private_path: Path, comment: str) -> str:
    """Write an OpenSSH ed25519 private key (and ``.pub``); return the public line."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    write_secret(private_path, private)
    line = f"{public} {comment}"
    private_path.with_suffix(".pub").write_text(line + "\n")
    return line


def known_hosts_line(address: str, public_line: str) -> str:
    key_type, key_b64 = public_line.split()[:2]
    return f"{address} {key_type} {key_b64}"
