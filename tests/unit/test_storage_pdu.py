"""iSCSI PDUs and the redirector's answer to a login: pure code, hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ahvlite.storage import pdu
from ahvlite.storage.health import TargetHealth, record
from ahvlite.storage.login import verdict
from ahvlite.storage.names import HEALTH_TARGET, volume_target

ISID = b"\x80\x01\x02\x03\x04\x05"
DISK = volume_target("vm-a-disk0-1234abcd.raw")


def split(raw: bytes) -> tuple[pdu.Bhs, bytes]:
    bhs = pdu.parse_bhs(raw[:pdu.BHS_LEN])
    return bhs, raw[pdu.BHS_LEN:pdu.BHS_LEN + bhs.data_len]


def test_login_request_round_trip():
    keys = {"InitiatorName": "iqn.2008-11.org.linux-kvm:x", "TargetName": DISK,
            "SessionType": "Normal"}
    raw = pdu.login_request(isid=ISID, itt=7, cmdsn=1, exp_statsn=0, keys=keys)
    assert len(raw) % 4 == 0 and raw[0] == 0x43  # immediate Login Request
    bhs, data = split(raw)
    req = pdu.parse_login_request(bhs, data)
    assert (req.isid, req.itt, req.cmdsn, req.csg, req.nsg, req.transit) == \
        (ISID, 7, 1, 1, 3, True)
    assert req.keys() == keys


def test_redirect_response_is_what_libiscsi_follows():
    req = pdu.parse_login_request(*split(pdu.login_request(
        isid=ISID, itt=9, cmdsn=5, exp_statsn=0, keys={"InitiatorName": "i"})))
    raw = pdu.login_response(request=req, status=pdu.STATUS_MOVED_TEMPORARILY,
                             keys={"TargetAddress": "10.0.0.2:3260"})
    assert raw[0] == pdu.OP_LOGIN_RSP
    # libiscsi reads the status at bytes 36-37 and follows only 0x0101.
    assert struct.unpack_from(">H", raw, 36)[0] == 0x0101
    rsp = pdu.parse_login_response(*split(raw))
    assert rsp.itt == 9 and rsp.isid == ISID and rsp.exp_cmdsn == 5
    assert rsp.keys() == {"TargetAddress": "10.0.0.2:3260"}
    # TargetAddress for a redirect carries no portal group tag (RFC 7143 13.8).
    assert b"," not in rsp.data


def test_nop_round_trip():
    raw = pdu.nop_out(itt=3, cmdsn=2, exp_statsn=4, data=b"ping")
    bhs, data = split(raw)
    assert bhs.opcode == pdu.OP_NOP_OUT and bhs.immediate and data == b"ping"
    assert bhs.u32(20) == pdu.RESERVED_TAG  # a ping from the initiator
    nop_in = bytearray(raw)
    nop_in[0] = pdu.OP_NOP_IN
    parsed = pdu.parse_nop_in(*split(bytes(nop_in)))
    assert parsed.itt == 3 and parsed.data == b"ping"


@pytest.mark.parametrize("data", [
    b"Key", b"Key=v", b"=v\0", b"A=1\0A=2\0", b"K\xffy=v\0", b"A=\xff\0", b"A=1\0\0B=2\0",
    b"Bad Key=v\0", b"K=" + b"x" * 9000 + b"\0",
])
def test_text_refuses_what_is_not_key_value_nul(data):
    with pytest.raises(pdu.PduError):
        pdu.parse_text(data)


def test_text_allows_padding():
    assert pdu.parse_text(b"A=1\0B=\0\0\0") == {"A": "1", "B": ""}
    assert pdu.parse_text(b"") == {} and pdu.parse_text(b"\0\0") == {}


def test_header_refuses_oversized_data():
    raw = bytearray(pdu.login_request(isid=ISID, itt=1, cmdsn=1, exp_statsn=0, keys={}))
    raw[5:8] = (pdu.MAX_LOGIN_DATA + 1).to_bytes(3, "big")
    with pytest.raises(pdu.PduError):
        pdu.parse_bhs(bytes(raw[:48]))
    with pytest.raises(pdu.PduError):
        pdu.parse_bhs(b"\x03" * 47)


@given(st.binary(min_size=48, max_size=48), st.binary(max_size=600))
def test_garbage_never_crashes_the_parsers(head, data):
    """A hostile initiator on loopback: only PduError, never another exception."""
    try:
        bhs = pdu.parse_bhs(head)
        req = pdu.parse_login_request(bhs, data)
        keys = req.keys()
    except pdu.PduError:
        return
    assert isinstance(keys, dict)
    targets = {"h1": TargetHealth("h1", "10.0.0.1:3260")}
    v = verdict(req, keys, targets, "h1", rise=3)
    assert v.host is None  # nothing is healthy: nobody is sent anywhere


@given(st.dictionaries(st.from_regex(r"[A-Za-z][A-Za-z0-9.]{0,20}", fullmatch=True),
                       st.text(alphabet=st.characters(blacklist_characters="\0",
                                                      blacklist_categories=("Cs",)),
                               max_size=40), max_size=8))
def test_text_round_trip(keys):
    assert pdu.parse_text(pdu.encode_text(keys)) == keys


def _req(**over):
    base = dict(isid=ISID, itt=1, cmdsn=1, exp_statsn=0,
                keys={"InitiatorName": "iqn.2008-11.org.linux-kvm:u", "TargetName": DISK})
    keys = over.pop("keys", base["keys"])
    raw = pdu.login_request(**{**base, **over, "keys": keys})
    bhs, data = split(raw)
    return pdu.parse_login_request(bhs, data), keys


def healthy(host: str, streak: int = 3) -> TargetHealth:
    h = TargetHealth(host, f"10.0.0.{host[1:]}:3260")
    for i in range(streak):
        h = record(h, ok=True, at_s=i, rtt_ms=1.0)
    return h


def failed(host: str) -> TargetHealth:
    return record(healthy(host, 10), ok=False, at_s=11, error="no NOP-In")


def test_verdict_prefers_the_local_target():
    req, keys = _req()
    v = verdict(req, keys, {"h1": healthy("h1"), "h2": healthy("h2", 9)}, "h1", rise=3)
    assert (v.status, v.host, v.keys) == (0x0101, "h1", {"TargetAddress": "10.0.0.1:3260"})


def test_verdict_skips_a_local_target_that_failed():
    req, keys = _req()
    v = verdict(req, keys, {"h1": failed("h1"), "h2": healthy("h2"), "h3": failed("h3")},
                "h1", rise=3)
    assert v.host == "h2" and "failed" in v.reason


@pytest.mark.parametrize(("keys", "over", "status"), [
    ({"TargetName": DISK}, {}, pdu.STATUS_MISSING_PARAMETER),
    ({"InitiatorName": "i"}, {}, pdu.STATUS_MISSING_PARAMETER),
    ({"InitiatorName": "i", "TargetName": "iqn.2000-01.com.other:t"}, {}, pdu.STATUS_NOT_FOUND),
    ({"InitiatorName": "i", "TargetName": HEALTH_TARGET}, {}, pdu.STATUS_NOT_FOUND),
    ({"InitiatorName": "i", "SessionType": "Other"}, {},
     pdu.STATUS_SESSION_TYPE_UNSUPPORTED),
    ({"InitiatorName": "i", "TargetName": DISK}, {"tsih": 5}, pdu.STATUS_SESSION_NOT_FOUND),
])
def test_verdict_refusals(keys, over, status):
    req, _ = _req(keys=keys, **over)
    assert verdict(req, keys, {"h1": healthy("h1")}, "h1", rise=3).status == status


def test_no_healthy_target_is_service_unavailable():
    req, keys = _req()
    v = verdict(req, keys, {"h1": failed("h1"), "h2": TargetHealth("h2", "x:1")}, "h1",
                rise=3)
    assert v.status == pdu.STATUS_SERVICE_UNAVAILABLE and v.host is None


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=300))
def test_login_headers_with_garbage_text_never_crash(flags, version_min, tsih, data):
    raw = bytearray(pdu.login_request(isid=ISID, itt=1, cmdsn=1, exp_statsn=0, keys={}))
    raw[1], raw[3] = flags, version_min
    raw[14:16] = tsih.to_bytes(2, "big")
    raw[5:8] = len(data).to_bytes(3, "big")
    bhs = pdu.parse_bhs(bytes(raw[:48]))
    req = pdu.parse_login_request(bhs, data)
    try:
        keys = req.keys()
    except pdu.PduError:
        return
    v = verdict(req, keys, {"h1": healthy("h1")}, "h1", rise=3)
    assert v.host in (None, "h1")
    if v.host is not None:
        assert version_min == 0 and tsih == 0 and keys.get("InitiatorName")
