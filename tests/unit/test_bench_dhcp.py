"""The DHCP bench's reading of a capture: DISCOVER -> ACK per xid, from tcpdump's
decoded output (a real exchange with the lab's uplink dnsmasq, recorded with
``tcpdump -l -nn -tt -v`` on the client's port, trimmed to the lines it reads)."""

from __future__ import annotations

import pytest

from bench.dhcp import exchanges, server_shares

RECORDED = """\
1795691276.796107 IP (tos ...)
    0.0.0.0.68 > 255.255.255.255.67: Request from 52:54:00:d2:00:20, xid 0x781dce73
        DHCP-Message (53), length 1: Discover
1795691276.796726 IP (tos ...)
    10.20.0.250.67 > 10.20.0.16.68: Reply, xid 0x781dce73
        DHCP-Message (53), length 1: Offer
1795691276.824105 IP (tos ...)
    0.0.0.0.68 > 255.255.255.255.67: Request from 52:54:00:d2:00:20, xid 0x781dce73
        DHCP-Message (53), length 1: Request
1795691276.824812 IP (tos ...)
    10.20.0.250.67 > 10.20.0.16.68: Reply, xid 0x781dce73
        DHCP-Message (53), length 1: ACK
"""


def test_discover_to_ack_of_the_same_xid():
    assert exchanges(RECORDED) == [pytest.approx(1795691276.824812 - 1795691276.796107)]


def test_a_retransmitted_discover_counts_from_the_first_and_unacked_xids_not_at_all():
    first = RECORDED.partition("\n1795691276.796726")[0]
    again = first.replace("1795691276.796107", "1795691275.796107")
    other = first.replace("0x781dce73", "0x0badcafe")
    got = exchanges(again + "\n" + RECORDED + other)
    assert got == [pytest.approx(1795691276.824812 - 1795691275.796107)]


def test_the_servers_share_leaves_out_the_guests_offer_to_request():
    assert server_shares(RECORDED) == [pytest.approx(
        (1795691276.796726 - 1795691276.796107) + (1795691276.824812 - 1795691276.824105))]
