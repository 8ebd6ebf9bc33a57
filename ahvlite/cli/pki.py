"""``ahvlite pki``: certificates from the cluster CA, issued offline.

The CA directory is the one the playbook and the lab keep (``cacert.pem`` and
``cakey.pem``). A client certificate names an admin of the API (``cert:NAME``).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated

import typer

from ahvlite.cli.output import console, emit_json
from ahvlite.errors import Conflict, InvalidSpec

app = typer.Typer(no_args_is_help=True, help="The cluster CA: issue certificates offline.")
CN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@app.command("issue-client")
def issue_client(
    name: Annotated[str, typer.Argument(help="Who the certificate names (its CN).")],
    ca_dir: Annotated[Path, typer.Option("--ca-dir", help="The CA: cacert.pem, cakey.pem.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write NAME.pem, "
                                      "NAME-key.pem and ca.pem into.")],
    days: Annotated[int, typer.Option("--days", help="Validity in days.", min=1,
                                      max=3650)] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """An admin's client certificate for the API's mutual TLS (principal cert:NAME;
    OU=ahvlite-admins in its subject, which is what makes it an admin)."""
    from ahvlite.pki import ADMINS_UNIT, CertificateAuthority, write_secret

    if not CN.match(name):
        raise InvalidSpec("name", name, "letters, digits, . _ @ - (at most 64)")
    ca = CertificateAuthority.load(ca_dir)
    cert, key, ca_pem = out / f"{name}.pem", out / f"{name}-key.pem", out / "ca.pem"
    existing = [str(p) for p in (cert, key) if p.exists()]
    if existing and not force:
        raise Conflict(f"{', '.join(existing)} exist", hint="pass --force to replace them")
    issued = ca.issue(name, server=False, client=True, validity=dt.timedelta(days=days),
                      unit=ADMINS_UNIT)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_secret(key, issued.key_pem)
    cert.write_bytes(issued.cert_pem)
    ca_pem.write_bytes(ca.cert_pem)
    files = {"cert": str(cert), "key": str(key), "ca": str(ca_pem)}
    if json_out:
        emit_json({"principal": f"cert:{name}", **files})
        return
    console.print(f"issued cert:{name}, valid {days} days; in the client config:\n"
                  f"  ca: {ca_pem}\n  cert: {cert}\n  key: {key}", highlight=False)
