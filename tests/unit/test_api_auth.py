"""API principals and the token table (on the real SQLite store); the upload area."""

from __future__ import annotations

import os

import pytest

from ahvlite.controller.api.auth import Forbidden, TokenTable, authenticate, token_hash
from ahvlite.controller.api.uploads import TooLarge, UploadArea
from ahvlite.controller.coord.sqlite import SqliteCoordinator
from ahvlite.errors import Conflict, NotFound, Unauthorized
from ahvlite.pki import ADMINS_UNIT, CertificateAuthority, certificate_problem


@pytest.fixture
def table(tmp_path):
    coord = SqliteCoordinator(tmp_path / "c.db")
    now = [1000.0]
    yield TokenTable(coord, lambda: now[0]), now
    coord.close()


def test_tokens_by_name_hash_only_expiry_and_revocation(table):
    tokens, now = table
    token, rec = tokens.create("ci", "cert:admin", ttl_s=10)
    assert rec.expires_at == 1010.0 and len(token) == 43
    assert tokens.check(token) == rec
    assert list(tokens.coord.children("auth/tokens")) == [token_hash(token)]
    with pytest.raises(Conflict):
        tokens.create("ci", "cert:admin")
    assert tokens.check(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    now[0] = 1010.0
    assert tokens.check(token) is None  # expired
    other, _ = tokens.create("bot", "cert:admin")
    tokens.revoke("bot")
    assert tokens.check(other) is None and [r.name for r in tokens.list()] == ["ci"]
    with pytest.raises(NotFound):
        tokens.revoke("bot")
    again, _ = tokens.create("bot", "cert:admin")  # the name is free again
    assert tokens.check(again) is not None


def test_a_damaged_token_record_refuses_rather_than_crashes(table):
    tokens, _ = table
    token, _ = tokens.create("ci", "cert:admin")
    tokens.coord.put(f"auth/tokens/{token_hash(token)}", b"{not json")
    assert tokens.check(token) is None and tokens.list() == []
    tokens.revoke("ci")  # still revocable by name
    assert tokens.coord.children("auth/tokens") == {}


def test_authenticate_needs_valid_credentials_and_never_ignores_bad_ones(table):
    tokens, _ = table
    token, _ = tokens.create("ci", "cert:admin")
    admin = CertificateAuthority.new("t").issue("alice", server=False, client=True,
                                                unit=ADMINS_UNIT)
    tls = {"client_cert_chain": [admin.cert_pem.decode()]}
    assert authenticate(tokens, tls, None).name == "cert:alice"
    assert authenticate(tokens, None, f"Bearer {token}").name == "token:ci"
    assert authenticate(tokens, {"client_cert_chain": []}, f"bearer  {token}").method == "token"
    for tls_ext, header in [(None, None), ({}, ""), (None, "Bearer"), (None, f"Basic {token}"),
                            (None, "Bearer short"), (tls, "Bearer " + "x" * 43)]:
        with pytest.raises(Unauthorized):
            authenticate(tokens, tls_ext, header)


def test_only_an_admins_certificate_is_a_principal_a_hosts_is_forbidden(table):
    tokens, _ = table
    token, _ = tokens.create("ci", "cert:admin")
    ca = CertificateAuthority.new("t")
    host = ca.issue("h1", ips=("10.0.0.1",), server=False, client=True)  # libvirt's
    tls = {"client_cert_chain": [host.cert_pem.decode()]}
    with pytest.raises(Forbidden, match="not an admin"):
        authenticate(tokens, tls, None)
    # A valid token still speaks for its holder; a bad one is never ignored.
    assert authenticate(tokens, tls, f"Bearer {token}").name == "token:ci"
    with pytest.raises(Unauthorized, match="not valid"):
        authenticate(tokens, tls, "Bearer " + "x" * 43)
    # Another unit is no admin either.
    other = ca.issue("bob", server=False, client=True, unit="ahvlite-operators")
    with pytest.raises(Forbidden):
        authenticate(tokens, {"client_cert_chain": [other.cert_pem.decode()]}, None)


def test_certificate_problem_names_the_reason():
    import datetime as dt

    ca, other = CertificateAuthority.new("ca"), CertificateAuthority.new("other")
    good = ca.issue("a", server=False, client=True)
    assert certificate_problem(good.cert_pem, ca.cert_pem) is None
    assert certificate_problem(good.cert_pem, other.cert_pem + ca.cert_pem) is None  # bundle
    assert "not by the CA" in certificate_problem(good.cert_pem, other.cert_pem)
    old = ca.issue("a", server=False, client=True, validity=-dt.timedelta(days=1))
    assert "expired" in certificate_problem(old.cert_pem, ca.cert_pem)


def test_upload_area_stages_atomically_caps_and_sweeps(tmp_path):
    now = [10_000.0]
    area = UploadArea(tmp_path / "up", max_bytes=10, clock=lambda: now[0])
    s = area.begin(5)
    s.write(b"12345")
    assert [p.name for p in area.directory.iterdir()] == [f"{s.id}.part"]
    upload_id, size, _sha = s.finish()
    assert area.path(upload_id).read_bytes() == b"12345" and size == 5
    assert oct(area.directory.stat().st_mode & 0o777) == "0o700"
    with pytest.raises(TooLarge):
        area.begin(11)
    s = area.begin()
    s.write(b"123456")
    with pytest.raises(TooLarge):
        s.write(b"12345")
    s.abort()
    (area.directory / "keep-me.txt").write_text("not ours")
    os.utime(area.directory / upload_id, (now[0] - 3601, now[0] - 3601))
    assert area.sweep() == [upload_id]
    assert sorted(p.name for p in area.directory.iterdir()) == ["keep-me.txt"]
