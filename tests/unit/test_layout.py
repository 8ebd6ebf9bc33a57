"""The lab's addressing and naming plan (pure)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ahvlite.errors import InvalidSpec
from ahvlite.lab.layout import plan_layout
from ahvlite.spec.errors import build
from ahvlite.spec.lab import LabSpec, default_subnet

ROOT = Path("/nonexistent/labs/x")


@given(
    name=st.from_regex(r"^[a-z][a-z0-9]{0,7}$", fullmatch=True),
    hosts=st.integers(1, 16),
    prefix=st.integers(20, 29),
)
def test_addresses_are_unique_inside_the_subnet_and_names_fit_the_kernel(name, hosts, prefix):
    subnet = ipaddress.IPv4Network(f"10.77.0.0/{prefix}")
    spec = LabSpec(name=name, hosts=hosts, subnet=subnet)
    try:
        layout = plan_layout(spec, ROOT)
    except InvalidSpec as exc:
        assert exc.field == "subnet"
        assert len(list(subnet.hosts())) < 1 + 2 * hosts
        return
    addrs = [layout.gateway.ip] + [h.address.ip for h in layout.hosts]
    addrs += [a.ip for a in layout.guest_addresses]
    assert len(addrs) == len(set(addrs)) == 1 + 2 * hosts
    assert all(a in subnet and a not in (subnet.network_address, subnet.broadcast_address)
               for a in addrs)
    names = [layout.bridge] + [v for h in layout.hosts for v in h.veths]
    assert all(len(n) <= 15 for n in names), names
    assert len(set(names)) == len(names)
    assert len({h.host_uuid for h in layout.hosts}) == hosts


def test_too_small_subnet_names_the_field_value_and_the_size_needed():
    with pytest.raises(InvalidSpec) as err:
        plan_layout(LabSpec(name="lab", hosts=3, subnet="10.1.1.0/29"), ROOT)
    assert err.value.field == "subnet"
    assert err.value.value == "10.1.1.0/29"
    assert "needs 7 addresses" in err.value.message
    assert "has 6" in err.value.message


def test_default_subnets_differ_by_name_and_are_stable():
    assert default_subnet("lab") == default_subnet("lab")
    assert default_subnet("lab") != default_subnet("ci")
    assert default_subnet("lab").prefixlen == 24


@pytest.mark.parametrize(("values", "field"), [
    ({"name": "Lab"}, "name"),
    ({"name": "toolongname"}, "name"),
    ({"hosts": 0}, "hosts"),
    ({"hosts": 17}, "hosts"),
    ({"subnet": "8.8.8.0/24"}, "subnet"),
    ({"subnet": "10.0.0.1/24"}, "subnet"),
    ({"subnet": "10.0.0.0/30"}, "subnet"),
    ({"subnet": "banana"}, "subnet"),
])
def test_bad_lab_input_is_an_invalid_spec_naming_the_field(values, field):
    with pytest.raises(InvalidSpec) as err:
        build(LabSpec, **values)
    assert err.value.field == field
    assert str(next(iter(values.values()))) in err.value.message


def test_lookup_of_unknown_host_lists_the_known_ones():
    layout = plan_layout(LabSpec(name="lab", hosts=2), ROOT)
    with pytest.raises(InvalidSpec) as err:
        layout.host("h9")
    assert "h1, h2" in err.value.message


@given(a=st.from_regex(r"^[a-z][a-z0-9]{0,7}$", fullmatch=True),
       b=st.from_regex(r"^[a-z][a-z0-9]{0,7}$", fullmatch=True))
def test_one_labs_name_sweep_never_matches_another_labs_objects(a, b):
    from ahvlite.lab.layout import netns_prefix, segment_name, segment_prefix, veth_prefix

    if a == b:
        return
    other = plan_layout(LabSpec(name=b, hosts=2), ROOT)
    assert not any(v.startswith(veth_prefix(a)) for h in other.hosts for v in h.veths)
    assert not any(h.netns.startswith(netns_prefix(a)) for h in other.hosts)
    # A's segment sweep takes none of B's links, and B's segments are none of A's.
    others = [other.bridge, segment_name(b, 1), segment_name(b, 16)]
    others += [v for h in other.hosts for v in h.veths]
    assert not any(n.startswith(segment_prefix(a)) for n in others)
    mine = plan_layout(LabSpec(name=a, hosts=2), ROOT)
    assert not any(v.startswith(segment_prefix(a)) for h in mine.hosts for v in h.veths)
    assert not mine.bridge.startswith(segment_prefix(a))
    assert other.bridge != plan_layout(LabSpec(name=a, hosts=1), ROOT).bridge


@given(name=st.from_regex(r"^[a-z][a-z0-9]{0,7}$", fullmatch=True),
       taken=st.sets(st.integers(1, 20), max_size=16))
def test_next_segment_takes_the_lowest_free_number_and_fits_the_kernel(name, taken):
    from ahvlite.lab.layout import next_segment, segment_name, segment_prefix

    names = {segment_name(name, n) for n in taken} | {f"v{name}-1a", "ahvl-x"}
    seg = next_segment(name, names)
    assert seg not in names
    assert seg.startswith(segment_prefix(name))
    number = int(seg.removeprefix(segment_prefix(name)))
    assert number == min(set(range(1, 22)) - taken)
    assert len(seg) <= 15  # IFNAMSIZ - 1: at most 16 hosts, so at most 17 is ever needed


def test_next_segment_ignores_other_labs_segments():
    from ahvlite.lab.layout import next_segment

    assert next_segment("lab", ["slab1-1", "slab-2", "sla-1"]) == "slab-1"
    assert next_segment("lab", ["slab-1", "slab-2"]) == "slab-3"
