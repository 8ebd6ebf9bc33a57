"""The fencing clocks (agent lease, leader's fence clock), records, the election probe's
parsing, settings (restart order and placement: test_sched_restart.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ahvlite.controller.coord.api import MemberState
from ahvlite.controller.coord.ensemble import NOT_SERVING, majority_electing, probe, state_of
from ahvlite.controller.ha.lease import AgentLease, Beat, FenceClock
from ahvlite.controller.ha.records import AgentDoc, BadRecord, Intent, StoredVm
from ahvlite.controller.ha.settings import HaSettings
from ahvlite.errors import InvalidSpec

BEAT = Beat(0, lease_s=6, watchdog_s=3)


def test_the_lease_runs_from_the_send_time_of_the_last_acknowledged_beat():
    lease = AgentLease(6)
    assert not lease.holds(0)  # a new agent holds nothing until the store says yes
    lease.acknowledged(10)
    assert lease.holds(15.9) and not lease.holds(16)
    lease.acknowledged(9)  # a late reply of an older beat never shortens it
    assert lease.keep_until == 16
    lease.election_seen(12)
    assert lease.holds(17.9) and not lease.holds(18)


def test_the_fence_clock_counts_from_the_first_sight_of_a_version():
    fc = FenceClock(margin_s=1)
    fc.observe(100, "a", BEAT)
    fc.observe(104, "a", BEAT)
    assert fc.fresh(105.9, "a") and not fc.fresh(106, "a")
    assert not fc.lease_over(106.9, "a") and fc.lease_over(107, "a")
    assert fc.remaining_s(105, "a") == 5 and not fc.fenced(109.9, "a") and fc.fenced(110, "a")
    fc.observe(109, "a", Beat(1, 6, 3))  # it beat again: start over
    assert not fc.fenced(118.9, "a") and fc.fenced(119, "a")


def test_a_reconnection_of_the_leader_starts_every_host_over():
    fc = FenceClock(margin_s=1)
    fc.observe(0, "a", BEAT)
    fc.restart(8)  # the leader's own store connection was interrupted at 8
    fc.observe(9, "a", BEAT)
    assert not fc.fenced(17.9, "a") and fc.fenced(18, "a")
    fc.forget("a")
    assert fc.remaining_s(100, "a") == math.inf and not fc.fenced(100, "a")


@given(sent=st.lists(st.floats(0, 100), min_size=1, max_size=10),
       seen_delay=st.floats(0, 5), elections=st.lists(st.floats(0, 100), max_size=3),
       lease=st.floats(2, 30), wd=st.floats(1, 10), margin=st.floats(0.5, 5))
def test_the_leader_never_fences_before_the_agent_lets_go(sent, seen_delay, elections, lease,
                                                          wd, margin):
    """The two clocks of docs/ha.md: whatever the beats and elections, the moment the
    leader calls a host fenced is after the agent's lease ended plus its watchdog."""
    agent = AgentLease(lease)
    for s in sent:
        agent.acknowledged(s)
    for t in elections:
        agent.election_seen(t)
    # The leader saw the last beat no earlier than it was sent; and it reconnected to
    # the store after the last election the agent saw (elections disconnect everyone).
    fc = FenceClock(margin)
    fc.restart(max(elections, default=0))
    fc.observe(max(sent) + seen_delay, "a", Beat(7, lease, wd))
    t = max(sent) + seen_delay
    while not fc.fenced(t, "a"):
        t += 0.1
    assert t >= agent.keep_until + wd + margin - 1e-9


def test_records_decode_defensively():
    rec = StoredVm("v", "u", "h", 64, True, {"k": "v"}, False, {"name": "v"}, None, 2,
                   Intent("t", "h", 3, 1.0, 7), ("x",))
    assert StoredVm.from_bytes(rec.to_bytes()) == rec
    assert rec.moved_to("t", 3).restarted_from == ("x", "h")
    for raw, why in [(b"not json", "not JSON"), (b"[1]", "not a JSON object"),
                     (b'{"name": "v"}', "missing uuid"),
                     (b'{"name":"v","uuid":"u","host":"h","memory_mib":"64","running":true}',
                      "memory_mib has the wrong type"),
                     (b'{"name":"v","uuid":"u","host":"h","memory_mib":1,"running":true,'
                      b'"labels":{"a":1}}', "labels")]:
        with pytest.raises(BadRecord, match=why):
            StoredVm.from_bytes(raw)
    with pytest.raises(BadRecord):
        AgentDoc.from_bytes(b'{"host": "h", "seq": "x"}')


def test_srvr_answers_are_read_strictly():
    assert state_of("Zookeeper version: 3.8.0\nMode: follower\nNode count: 5\n") == "serving"
    assert state_of("Mode: leader\n") == "serving"
    assert state_of(f"This ZooKeeper instance is {NOT_SERVING} requests\n") == "electing"
    assert state_of("") == "unreachable"  # an answer we do not understand proves nothing
    assert state_of("Mode: banana\n") == "unreachable"
    states = [MemberState("a", "electing"), MemberState("b", "electing"),
              MemberState("c", "serving")]
    assert majority_electing(states, 3)
    assert not majority_electing(states[:1], 3)  # one of three is no majority
    assert not majority_electing(states, 5)


def test_the_probe_is_bounded_even_when_a_member_hangs():
    import time

    def ask(host: str, port: int, timeout_s: float) -> str:
        if host == "slow":
            time.sleep(3)
        return "Mode: follower\n"

    t0 = time.monotonic()
    got = probe([("slow", 1), ("fast", 2)], 0.3, ask=ask)
    assert time.monotonic() - t0 < 1.0
    assert [g.state for g in got] == ["unreachable", "serving"]


def test_settings_validation_names_the_field():
    s = HaSettings().with_changes(mode="guarantee", rf=3)
    assert s.failures_tolerated == 2 and s.reservation == "segment"
    assert HaSettings.from_doc(s.to_doc()) == s
    for bad, field in [({"mode": "always"}, "mode"), ({"rf": 4}, "rf"),
                       ({"reservation": "pool"}, "reservation"),
                       ({"lease_s": 1.0}, "lease_s"), ({"watchdog_s": 0.5}, "watchdog_s"),
                       ({"margin_s": 0.1}, "margin_s"), ({"heartbeat_s": True}, "heartbeat_s")]:
        with pytest.raises(InvalidSpec) as exc:
            HaSettings().with_changes(**bad)
        assert exc.value.field == field
    # Older documents (isolation timeout, countdown) still load.
    assert HaSettings.from_doc({"mode": "guarantee", "countdown_s": 8}).mode == "guarantee"
    assert HaSettings().restart_after_s == 14.0  # lease 10 + watchdog 3 + margin 1
