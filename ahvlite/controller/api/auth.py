"""Who is calling: an admin's client certificate of the cluster CA, or a bearer token.

Mutual TLS is decided in the handshake (an unverifiable certificate never gets here);
a verified one names the principal ``cert:CN`` only if it is an admin's: its subject
carries ``OU=ahvlite-admins`` (``ahvlite pki issue-client``). Any other certificate of
the CA (a host's libvirt client certificate, say) is authenticated but refused (403).
Tokens are random strings handed out
once; the store keeps only their SHA-256 (``auth/tokens/HEX``) and a name index
(``auth/token-names/NAME``) that makes names unique by compare-and-set. A token whose
record is gone (revoked) or past ``expires_at`` is refused like an unknown one.

No web framework here: the app passes the TLS details and the Authorization header.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ahvlite.controller.coord.api import MUST_NOT_EXIST, Coordinator, Delete, Put
from ahvlite.controller.coord.api import VersionMismatch as _VersionMismatch
from ahvlite.errors import Conflict, NotFound, Unauthorized
from ahvlite.pki import ADMINS_UNIT, common_name, is_admin

log = logging.getLogger(__name__)

TOKENS = "auth/tokens"
NAMES = "auth/token-names"
# token_urlsafe(32) gives 43 characters; anything far from that shape is not ours and
# is refused before the store is asked.
TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{20,256}$")


class Forbidden(Unauthorized):
    """Authenticated, but this principal may not do this (HTTP 403)."""


@dataclass(frozen=True)
class Principal:
    name: str  # cert:CN or token:NAME; what tasks record as submitted_by
    method: Literal["cert", "token"]


@dataclass(frozen=True)
class TokenRecord:
    name: str
    created_at: float
    created_by: str
    expires_at: float | None = None

    def to_json(self) -> bytes:
        return json.dumps({"name": self.name, "created_at": self.created_at,
                           "created_by": self.created_by, "expires_at": self.expires_at},
                          sort_keys=True).encode()

    @classmethod
    def parse(cls, raw: bytes) -> TokenRecord | None:
        """A stored record, or None when it is not one (never trusted blindly)."""
        try:
            d = json.loads(raw)
            rec = cls(d["name"], float(d["created_at"]), d["created_by"],
                      None if d.get("expires_at") is None else float(d["expires_at"]))
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(rec.name, str) or not isinstance(rec.created_by, str):
            return None
        return rec


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenTable:
    """The bearer tokens in the coordination store; ``clock`` is wall-clock seconds."""

    def __init__(self, coord: Coordinator, clock: Callable[[], float]) -> None:
        self.coord = coord
        self.clock = clock

    def create(self, name: str, created_by: str,
               ttl_s: float | None = None) -> tuple[str, TokenRecord]:
        """A new token named ``name``; returns it (the only time it is seen) and its record."""
        token = secrets.token_urlsafe(32)
        digest = token_hash(token)
        now = self.clock()
        rec = TokenRecord(name, now, created_by, None if ttl_s is None else now + ttl_s)
        try:
            self.coord.transaction([
                Put(f"{NAMES}/{name}", json.dumps({"hash": digest}).encode(), MUST_NOT_EXIST),
                Put(f"{TOKENS}/{digest}", rec.to_json(), MUST_NOT_EXIST)])
        except _VersionMismatch:
            raise Conflict(f"a token named {name!r} exists",
                           hint=f"revoke it first (`ahvlite auth token revoke {name}`) "
                                "or choose another name") from None
        return token, rec

    def list(self) -> list[TokenRecord]:
        recs = (TokenRecord.parse(v.value) for v in self.coord.children(TOKENS).values())
        return sorted((r for r in recs if r is not None), key=lambda r: r.name)

    def revoke(self, name: str) -> None:
        got = self.coord.get(f"{NAMES}/{name}")
        if got is None:
            raise NotFound(f"no token named {name!r}", hint="see `ahvlite auth token list`")
        try:
            digest = json.loads(got.value)["hash"]
            ok = isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)
        except (ValueError, KeyError, TypeError):
            ok = False
        ops: list[Any] = [Delete(f"{NAMES}/{name}", got.version)]
        if ok and self.coord.get(f"{TOKENS}/{digest}") is not None:
            ops.append(Delete(f"{TOKENS}/{digest}"))
        try:
            self.coord.transaction(ops)
        except _VersionMismatch:
            raise Conflict(f"token {name!r} changed while revoking it; try again") from None

    def check(self, token: str) -> TokenRecord | None:
        """The record of a valid, unexpired token, else None."""
        if not TOKEN_SHAPE.match(token):
            return None
        digest = token_hash(token)
        # The lookup is by the token's hash, so its timing says nothing about the token
        # itself; the final comparison is constant-time all the same.
        got = self.coord.get(f"{TOKENS}/{digest}")
        if got is None:
            return None
        rec = TokenRecord.parse(got.value)
        if rec is None:
            log.warning("token record %s… is not valid JSON of a token; refused", digest[:8])
            return None
        if not hmac.compare_digest(token_hash(token), digest):
            return None
        if rec.expires_at is not None and self.clock() >= rec.expires_at:
            return None
        return rec


def cert_principal(tls: dict[str, Any] | None) -> Principal | None:
    """The principal of a client certificate the TLS handshake verified, if any;
    Forbidden when it is not an admin's."""
    chain = (tls or {}).get("client_cert_chain") or []
    if not chain:
        return None
    cn = common_name(chain[0])
    if not cn:
        raise Unauthorized("the client certificate names no common name (CN)")
    if not is_admin(chain[0]):
        raise Forbidden(f"the client certificate of {cn!r} is not an admin's (its subject "
                        f"has no OU={ADMINS_UNIT})",
                        hint="use a certificate from `ahvlite pki issue-client`, or a token")
    return Principal(f"cert:{cn}", "cert")


def authenticate(tokens: TokenTable, tls: dict[str, Any] | None,
                 authorization: str | None) -> Principal:
    """The caller, or Unauthorized (Forbidden for a certificate that is not an
    admin's). A bearer token that is given must be valid, even beside a certificate
    (bad credentials are never ignored); a valid one speaks for a caller whose
    certificate is not an admin's."""
    try:
        by_cert = cert_principal(tls)
        refused = None
    except Forbidden as exc:
        by_cert, refused = None, exc
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header is not `Bearer TOKEN`")
        rec = tokens.check(token.strip())
        if rec is None:
            raise Unauthorized("the token is not valid (unknown, revoked or expired)",
                               hint="ask an admin for a new one: `ahvlite auth token create`")
        return by_cert or Principal(f"token:{rec.name}", "token")
    if refused is not None:
        raise refused
    if by_cert is None:
        raise Unauthorized("no credentials: present an admin's client certificate of the "
                           "cluster CA or an `Authorization: Bearer TOKEN` header")
    return by_cert
