"""iSCSI PDUs, the few the redirector and its health checks need (RFC 7143). Pure.

Every PDU starts with a 48-byte Basic Header Segment (BHS, section 11.2): opcode,
flags, TotalAHSLength (in 4-byte words), DataSegmentLength (bytes, 24 bits), and
fields that depend on the opcode. The data segment follows, padded to 4 bytes. Header
and data digests are never negotiated by us (we offer ``None`` and redirect before any
negotiation happens), so none is read or written.

The redirector reads PDUs from anyone who can reach 127.0.0.1:3261, so parsing never
trusts a length or a string: :func:`parse_bhs` and :func:`parse_text` raise
:class:`PduError` (a ``ValueError``) on anything malformed or too large, and nothing
else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

BHS_LEN = 48
# RFC 7143 12.12: the default MaxRecvDataSegmentLength, and the most a Login PDU may
# carry before negotiation (section 6.1: login text is at most this per PDU).
MAX_LOGIN_DATA = 8192
# Names are at most 223 bytes (RFC 7143 4.2.7.1); a key value has 255 bytes for most
# keys and 8192 for a few we never read.
MAX_KEY_LEN = 63
MAX_VALUE_LEN = 8192

# Opcodes (section 11.1.1).
OP_NOP_OUT = 0x00
OP_SCSI_CMD = 0x01
OP_LOGIN_REQ = 0x03
OP_TEXT_REQ = 0x04
OP_LOGOUT_REQ = 0x06
OP_NOP_IN = 0x20
OP_SCSI_RSP = 0x21
OP_LOGIN_RSP = 0x23
OP_TEXT_RSP = 0x24
OP_LOGOUT_RSP = 0x26
OP_ASYNC = 0x32
OP_REJECT = 0x3F

IMMEDIATE = 0x40
FINAL = 0x80
LOGIN_TRANSIT = 0x80
LOGIN_CONTINUE = 0x40

# Login stages (CSG / NSG).
STAGE_SECURITY = 0
STAGE_OPERATIONAL = 1
STAGE_FULL_FEATURE = 3

RESERVED_TAG = 0xFFFFFFFF

# Login status (Status-Class << 8 | Status-Detail, section 11.13.5).
STATUS_SUCCESS = 0x0000
STATUS_MOVED_TEMPORARILY = 0x0101  # the redirect libiscsi follows (it treats 0x0102 as
STATUS_MOVED_PERMANENTLY = 0x0102  # a failed login)
STATUS_INITIATOR_ERROR = 0x0200
STATUS_NOT_FOUND = 0x0203
STATUS_UNSUPPORTED_VERSION = 0x0205
STATUS_MISSING_PARAMETER = 0x0207
STATUS_SESSION_TYPE_UNSUPPORTED = 0x0209
STATUS_SESSION_NOT_FOUND = 0x020A
STATUS_INVALID_DURING_LOGIN = 0x020B
STATUS_TARGET_ERROR = 0x0300
STATUS_SERVICE_UNAVAILABLE = 0x0301
STATUS_OUT_OF_RESOURCES = 0x0302


class PduError(ValueError):
    """Bytes that are not the PDU they should be; the connection is dropped."""


def pad4(n: int) -> int:
    return -n % 4


@dataclass(frozen=True)
class Bhs:
    """The parts of a BHS every opcode shares, and the raw 48 bytes for the rest."""

    opcode: int
    immediate: bool
    flags: int  # byte 1
    ahs_words: int
    data_len: int
    itt: int
    raw: bytes

    def u32(self, offset: int) -> int:
        return int(struct.unpack_from(">I", self.raw, offset)[0])

    def u16(self, offset: int) -> int:
        return int(struct.unpack_from(">H", self.raw, offset)[0])


def parse_bhs(raw: bytes, *, max_data: int = MAX_LOGIN_DATA) -> Bhs:
    """The header of a PDU; refuses a data segment over ``max_data`` bytes."""
    if len(raw) != BHS_LEN:
        raise PduError(f"a BHS has {BHS_LEN} bytes, got {len(raw)}")
    data_len = int.from_bytes(raw[5:8], "big")
    if data_len > max_data:
        raise PduError(f"data segment of {data_len} bytes (at most {max_data})")
    return Bhs(opcode=raw[0] & 0x3F, immediate=bool(raw[0] & IMMEDIATE), flags=raw[1],
               ahs_words=raw[4], data_len=data_len,
               itt=int(struct.unpack_from(">I", raw, 16)[0]), raw=bytes(raw))


# -- text keys (section 6.1) ------------------------------------------------------------

def parse_text(data: bytes) -> dict[str, str]:
    """``key=value`` pairs, each ended by a NUL; padding NULs at the end are allowed.

    A key given twice, a pair without ``=``, a key or value too long, or bytes that are
    not UTF-8 are refused (RFC 7143 6.1: keys and values are UTF-8, a key appears once).
    """
    out: dict[str, str] = {}
    body = data.rstrip(b"\0")
    if not body:
        return out
    if len(data) == len(body):
        raise PduError("text data does not end with NUL")
    for item in body.split(b"\0"):
        if not item:
            raise PduError("empty key=value pair")
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            raise PduError("a text pair without key=value")
        if len(key) > MAX_KEY_LEN or len(value) > MAX_VALUE_LEN:
            raise PduError("a text key or value too long")
        try:
            k, v = key.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError:
            raise PduError("text that is not UTF-8") from None
        if not k.isascii() or not all(c.isalnum() or c in ".-+@_" for c in k):
            raise PduError("a key with characters keys do not have")
        if k in out:
            raise PduError(f"key {k} given twice")
        out[k] = v
    return out


def encode_text(pairs: dict[str, str]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs.items())


def _pdu(header: bytearray, data: bytes) -> bytes:
    if len(data) >= 1 << 24:
        raise PduError("data segment too large")
    header[5:8] = len(data).to_bytes(3, "big")
    return bytes(header) + data + b"\0" * pad4(len(data))


# -- login ------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoginRequest:
    transit: bool
    cont: bool
    csg: int
    nsg: int
    version_max: int
    version_min: int
    isid: bytes
    tsih: int
    itt: int
    cid: int
    cmdsn: int
    exp_statsn: int
    data: bytes = b""

    def keys(self) -> dict[str, str]:
        return parse_text(self.data)


def parse_login_request(bhs: Bhs, data: bytes) -> LoginRequest:
    if bhs.opcode != OP_LOGIN_REQ:
        raise PduError(f"opcode {bhs.opcode:#04x} where a Login Request belongs")
    if bhs.ahs_words:
        raise PduError("a Login Request carries no AHS")
    raw = bhs.raw
    return LoginRequest(
        transit=bool(raw[1] & LOGIN_TRANSIT), cont=bool(raw[1] & LOGIN_CONTINUE),
        csg=(raw[1] >> 2) & 3, nsg=raw[1] & 3, version_max=raw[2], version_min=raw[3],
        isid=raw[8:14], tsih=bhs.u16(14), itt=bhs.itt, cid=bhs.u16(20),
        cmdsn=bhs.u32(24), exp_statsn=bhs.u32(28), data=data)


def login_request(*, isid: bytes, itt: int, cmdsn: int, exp_statsn: int,
                  keys: dict[str, str], csg: int = STAGE_OPERATIONAL,
                  nsg: int = STAGE_FULL_FEATURE, transit: bool = True,
                  tsih: int = 0, cid: int = 0) -> bytes:
    if len(isid) != 6:
        raise PduError("an ISID has 6 bytes")
    h = bytearray(BHS_LEN)
    h[0] = IMMEDIATE | OP_LOGIN_REQ  # login requests are always immediate
    h[1] = (LOGIN_TRANSIT if transit else 0) | (csg << 2) | (nsg if transit else 0)
    h[8:14] = isid
    struct.pack_into(">HIH", h, 14, tsih, itt, cid)
    struct.pack_into(">II", h, 24, cmdsn, exp_statsn)
    return _pdu(h, encode_text(keys))


@dataclass(frozen=True)
class LoginResponse:
    transit: bool
    cont: bool
    csg: int
    nsg: int
    version_active: int
    isid: bytes
    tsih: int
    itt: int
    statsn: int
    exp_cmdsn: int
    max_cmdsn: int
    status: int
    data: bytes = b""

    def keys(self) -> dict[str, str]:
        return parse_text(self.data)


def login_response(*, request: LoginRequest, status: int, keys: dict[str, str] | None = None,
                   statsn: int = 0, transit: bool = False, nsg: int = 0,
                   tsih: int = 0) -> bytes:
    """A Login Response to ``request``. For a status other than success, T, CSG and NSG
    are ignored by the initiator (section 11.13.5): they echo the request's CSG."""
    h = bytearray(BHS_LEN)
    h[0] = OP_LOGIN_RSP
    h[1] = (LOGIN_TRANSIT if transit else 0) | (request.csg << 2) | (nsg if transit else 0)
    h[2] = 0x00  # Version-max
    h[3] = 0x00  # Version-active: the only version there is
    h[8:14] = request.isid
    struct.pack_into(">HI", h, 14, tsih, request.itt)
    struct.pack_into(">III", h, 24, statsn, request.cmdsn, request.cmdsn)
    struct.pack_into(">H", h, 36, status)
    return _pdu(h, encode_text(keys or {}))


def parse_login_response(bhs: Bhs, data: bytes) -> LoginResponse:
    if bhs.opcode != OP_LOGIN_RSP:
        raise PduError(f"opcode {bhs.opcode:#04x} where a Login Response belongs")
    raw = bhs.raw
    return LoginResponse(
        transit=bool(raw[1] & LOGIN_TRANSIT), cont=bool(raw[1] & LOGIN_CONTINUE),
        csg=(raw[1] >> 2) & 3, nsg=raw[1] & 3, version_active=raw[3], isid=raw[8:14],
        tsih=bhs.u16(14), itt=bhs.itt, statsn=bhs.u32(24), exp_cmdsn=bhs.u32(28),
        max_cmdsn=bhs.u32(32), status=bhs.u16(36), data=data)


# -- NOP-Out / NOP-In (sections 11.18, 11.19) --------------------------------------------

def nop_out(*, itt: int, cmdsn: int, exp_statsn: int, ttt: int = RESERVED_TAG,
            data: bytes = b"") -> bytes:
    """A ping (``itt`` set, ``ttt`` reserved) or the answer to a target's ping (``itt``
    reserved, ``ttt`` echoed). Always immediate: it never takes a CmdSN slot."""
    h = bytearray(BHS_LEN)
    h[0] = IMMEDIATE | OP_NOP_OUT
    h[1] = FINAL
    struct.pack_into(">II", h, 16, itt, ttt)
    struct.pack_into(">II", h, 24, cmdsn, exp_statsn)
    return _pdu(h, data)


@dataclass(frozen=True)
class NopIn:
    itt: int
    ttt: int
    statsn: int
    exp_cmdsn: int
    max_cmdsn: int
    data: bytes = b""


def parse_nop_in(bhs: Bhs, data: bytes) -> NopIn:
    if bhs.opcode != OP_NOP_IN:
        raise PduError(f"opcode {bhs.opcode:#04x} where a NOP-In belongs")
    return NopIn(itt=bhs.itt, ttt=bhs.u32(20), statsn=bhs.u32(24), exp_cmdsn=bhs.u32(28),
                 max_cmdsn=bhs.u32(32), data=data)


def logout_request(*, itt: int, cmdsn: int, exp_statsn: int) -> bytes:
    """Close the session (reason 0): the polite end of a health session."""
    h = bytearray(BHS_LEN)
    h[0] = IMMEDIATE | OP_LOGOUT_REQ
    h[1] = FINAL
    struct.pack_into(">I", h, 16, itt)
    struct.pack_into(">II", h, 24, cmdsn, exp_statsn)
    return _pdu(h, b"")


@dataclass
class Reassembly:
    """Login text split over PDUs with the C bit (section 6.1.1), with a cap."""

    limit: int = MAX_LOGIN_DATA
    parts: list[bytes] = field(default_factory=list)

    def add(self, data: bytes) -> None:
        if sum(map(len, self.parts)) + len(data) > self.limit:
            raise PduError(f"login text over {self.limit} bytes")
        self.parts.append(data)

    def text(self) -> bytes:
        return b"".join(self.parts)
