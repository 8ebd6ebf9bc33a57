"""The lab tests' twin rule: hosts are read one after another, so one poll can see a
live migration on both ends; only a VM seen on the same hosts in two polls in a row ran
twice."""

from tests.lab.placements import Placements


def _record(*polls: dict[str, set[str]]) -> Placements:
    p = Placements.__new__(Placements)  # no thread, no lab: only the record
    p.seen = [(float(i), where) for i, where in enumerate(polls)]
    return p


def test_a_switchover_between_two_reads_is_no_twin() -> None:
    p = _record({"h1": {"vm"}, "h2": set()},
                {"h1": {"vm"}, "h2": {"vm"}},  # h1 read before the switch, h2 after
                {"h1": set(), "h2": {"vm"}})
    assert p.twins() == []
    assert p.path("vm") == ["h1", "h2"]


def test_a_vm_on_two_hosts_in_two_polls_is_a_twin() -> None:
    p = _record({"h1": {"vm"}, "h2": {"vm"}, "h3": set()},
                {"h1": {"vm"}, "h2": {"vm"}, "h3": {"other"}},
                {"h1": set(), "h2": {"vm"}, "h3": {"other"}})
    assert p.twins() == [(1.0, "vm", ["h1", "h2"])]

