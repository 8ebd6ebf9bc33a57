"""How a store client gets its credential and TLS files (coord/url.py), the lab's daemon
environment files, and certificate subjects as libvirt reads them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ahvlite.controller.coord.url import ZkTls, parse_store_url, read_secret_file
from ahvlite.envfile import read_env_file
from ahvlite.errors import InvalidSpec
from ahvlite.lab.pki import LabCA, install_client_pki, install_store_client
from ahvlite.pki import ADMINS_UNIT, CertificateAuthority, is_admin, libvirt_dn, write_secret

SECRET = "s3cr3t-Zq9"


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "store.secret"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_credential_comes_from_the_secret_file(tmp_path):
    path = secret_file(tmp_path, f"ahvlite:{SECRET}\n")
    url = parse_store_url("zk://h1:2281/ahvlite", env={"AHVLITE_STORE_SECRET_FILE": str(path)})
    assert (url.user, url.secret) == ("ahvlite", SECRET)
    assert SECRET not in repr(url) and SECRET not in url.redacted()
    # The URL, when given one (tests), wins; the file wins over $AHVLITE_ZK_AUTH.
    env = {"AHVLITE_STORE_SECRET_FILE": str(path), "AHVLITE_ZK_AUTH": "other:pw"}
    assert parse_store_url("zk://u:p@h1/a", env=env).secret == "p"
    assert parse_store_url("zk://h1/a", env=env).secret == SECRET
    assert parse_store_url("zk://h1/a", env={"AHVLITE_ZK_AUTH": "other:pw"}).user == "other"


@pytest.mark.parametrize(("text", "mode", "allowed"), [
    (f"ahvlite:{SECRET}\n", 0o644, "only its owner may read"),
    (f"ahvlite:{SECRET}\n", 0o640, "only its owner may read"),
    (f"{SECRET}\n", 0o600, "USER:SECRET"),
    (f"ahvlite:{SECRET}\nsecond line {SECRET}\n", 0o600, "USER:SECRET"),
    (f":{SECRET}", 0o600, "USER:SECRET"),
    ("ahvlite:\n", 0o600, "USER:SECRET"),
])
def test_a_bad_secret_file_is_refused_without_showing_it(tmp_path, text, mode, allowed):
    path = secret_file(tmp_path, text, mode)
    with pytest.raises(InvalidSpec) as err:
        parse_store_url("zk://h1/a", env={"AHVLITE_STORE_SECRET_FILE": str(path)})
    e = err.value
    assert e.field == "AHVLITE_STORE_SECRET_FILE" and allowed in e.allowed
    assert SECRET not in f"{e.message} {e.hint} {e.value} {e.allowed}"


def test_missing_relative_or_not_a_file(tmp_path):
    for value in (str(tmp_path / "nope"), "store.secret", str(tmp_path)):
        with pytest.raises(InvalidSpec) as err:
            read_secret_file(value)
        assert err.value.field == "AHVLITE_STORE_SECRET_FILE"
    link = tmp_path / "link"
    link.symlink_to(secret_file(tmp_path, f"a:{SECRET}"))
    with pytest.raises(InvalidSpec):  # a link could be swapped under us
        read_secret_file(str(link))


def test_the_tls_directory_names_the_missing_file(tmp_path):
    with pytest.raises(InvalidSpec) as err:
        parse_store_url("zk://h1/a", env={"AHVLITE_STORE_TLS_DIR": str(tmp_path)})
    assert err.value.field == "AHVLITE_STORE_TLS_DIR" and "ca.pem" in (err.value.hint or "")
    install_store_client(LabCA.create("t"), tmp_path, name="c")
    url = parse_store_url("zk://h1/a", env={"AHVLITE_STORE_TLS_DIR": str(tmp_path)})
    assert url.tls == ZkTls(tmp_path / "ca.pem", tmp_path / "client.pem",
                            tmp_path / "client-key.pem")
    assert (tmp_path / "client-key.pem").stat().st_mode & 0o077 == 0
    assert parse_store_url("zk://h1/a", env={}).tls is None


def test_env_files_read_like_systemds(tmp_path):
    path = tmp_path / "controller.env"
    write_secret(path, b"# a comment\n\nAHVLITE_HOST=h1\nAHVLITE_STORE=zk://a:1,b:2/x\n"
                       b"BAD LINE\nAHVLITE_WATCHDOG=unix:/run/w.sock\n")
    assert read_env_file(path) == {"AHVLITE_HOST": "h1", "AHVLITE_STORE": "zk://a:1,b:2/x",
                                   "AHVLITE_WATCHDOG": "unix:/run/w.sock"}


def test_admins_are_the_certificates_with_the_admins_unit(tmp_path):
    ca = CertificateAuthority.new("t")
    assert is_admin(ca.issue("alice", server=False, client=True, unit=ADMINS_UNIT).cert_pem)
    assert not is_admin(ca.issue("h1", server=False, client=True).cert_pem)
    install_client_pki(ca, tmp_path, name="root")  # the lab's and the playbook's admin
    assert is_admin((tmp_path / "clientcert.pem").read_bytes())


def test_subjects_as_libvirt_reads_them(tmp_path):
    ca = LabCA.create("x")
    host = ca.issue("x-h1", server=False, client=True)
    admin = ca.issue("root", server=False, client=True, unit=ADMINS_UNIT)
    assert libvirt_dn(host.cert_pem) == "O=ahvlite lab,CN=x-h1" == libvirt_dn(
        ca.subject_of("x-h1"))
    assert libvirt_dn(admin.cert_pem) == "O=ahvlite lab,OU=ahvlite-admins,CN=root"
    tool = shutil.which("virt-pki-query-dn")  # libvirt's own reading (libvirt-clients)
    if tool is None:
        pytest.fail("virt-pki-query-dn is missing: `make setup` installs libvirt-clients")
    for issued in (host, admin):
        path = tmp_path / "c.pem"
        path.write_bytes(issued.cert_pem)
        out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == libvirt_dn(issued.cert_pem)
    with pytest.raises(InvalidSpec):  # a glob would admit more than one subject
        libvirt_dn(ca.subject_of("h*"))
