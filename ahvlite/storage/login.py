"""What the redirector answers to a Login Request (pure).

The redirector is not a target: it takes part in the login phase only, and its first
(and only) answer ends it. RFC 7143 6.2 and 11.13.5: a Login Response of status class
1 ("redirection") with ``TargetAddress=ADDRESS:PORT`` sends the initiator there; the
portal group tag is left out, as the RFC asks for a redirect. We always use 0x0101
(moved temporarily): the next login of the same disk must come back through us, and
libiscsi (QEMU's initiator) follows only that one (it takes 0x0102 as a failed login).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ahvlite.storage import pdu
from ahvlite.storage.health import TargetHealth, choose
from ahvlite.storage.names import is_volume_target


@dataclass(frozen=True)
class Verdict:
    status: int
    reason: str
    host: str | None = None  # where the login goes (a redirect)
    portal: str | None = None

    @property
    def keys(self) -> dict[str, str]:
        return {"TargetAddress": self.portal} if self.portal else {}


def verdict(req: pdu.LoginRequest, keys: Mapping[str, str],
            targets: Mapping[str, TargetHealth], local: str, *, rise: int,
            exclude: tuple[str, ...] = ()) -> Verdict:
    """The answer to a complete first Login Request (its text already joined)."""
    if req.version_min > 0:
        return Verdict(pdu.STATUS_UNSUPPORTED_VERSION, f"version {req.version_min}")
    if req.tsih != 0:
        # A connection for an existing session: sessions live on targets, not here.
        return Verdict(pdu.STATUS_SESSION_NOT_FOUND, "TSIH of a session we do not hold")
    if not keys.get("InitiatorName"):
        return Verdict(pdu.STATUS_MISSING_PARAMETER, "no InitiatorName")
    kind = keys.get("SessionType", "Normal")
    if kind not in ("Normal", "Discovery"):
        return Verdict(pdu.STATUS_SESSION_TYPE_UNSUPPORTED, f"SessionType {kind}")
    if kind == "Normal":
        target = keys.get("TargetName")
        if not target:
            return Verdict(pdu.STATUS_MISSING_PARAMETER, "no TargetName")
        if not is_volume_target(target):
            return Verdict(pdu.STATUS_NOT_FOUND, "not a disk of this cluster")
    host = choose(targets, local, rise=rise, exclude=exclude)
    if host is None:
        return Verdict(pdu.STATUS_SERVICE_UNAVAILABLE, "no healthy target")
    why = "local target healthy" if host == local else f"local target {targets[local].state}" \
        if local in targets else "no local target"
    return Verdict(pdu.STATUS_MOVED_TEMPORARILY, why, host=host, portal=targets[host].portal)
