"""Top-of-rack segments: how a partition splits the lab's hosts into groups.

Every host starts on the main segment, the lab bridge, which also holds the root
namespace's gateway address. A partition moves a group of hosts' uplinks (the root
ends of both their veths) onto a segment bridge of their own. That bridge has no
address of any kind, so the group still reaches itself, nobody else reaches it, and
the root namespace has no way onto it (nothing on it can leave the machine). Each
partition makes a new segment; a host already on one moves to the new group, and a
segment left without ports is removed. Healing moves hosts back to the main segment.

Segment bridges are named from the lab name and recorded in the lab state before
they are created, so ``lab down`` and ``lab up``'s leftover sweep remove them.

The veths keep TX checksum offload off (set at ``lab up``): a bridge port's own
features do not change with its master, and a segment bridge sends nothing itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ahvlite.errors import InvalidSpec, NotFound
from ahvlite.lab.layout import HostLayout, LabLayout, next_segment, segment_prefix
from ahvlite.lab.state import LabState
from ahvlite.net import netlink


def _hosts(layout: LabLayout, names: Sequence[str]) -> list[HostLayout]:
    # layout.host raises InvalidSpec naming the known hosts for an unknown one; a host
    # named twice is moved once.
    hosts = [layout.host(n) for n in dict.fromkeys(names)]
    for host in hosts:
        missing = [v for v in host.veths if not netlink.link_exists(v)]
        if missing:
            raise NotFound(f"lab {layout.name!r}: {host.name} has no uplink "
                           f"{', '.join(missing)}",
                           hint=f"`ahvlite lab status --name {layout.name}`; is it up?")
    return hosts


def host_segment(layout: LabLayout, host: HostLayout) -> str | None:
    """The bridge ``host``'s uplinks are on (``a+b`` if they differ; None if gone)."""
    masters = list(dict.fromkeys(netlink.link_master(v) for v in host.veths))
    if masters == [None]:
        return None
    return "+".join(m or "-" for m in masters)


def _known_segments(layout: LabLayout, state: LabState) -> list[str]:
    return sorted(set(state.segments) | set(netlink.links_with_prefix(
        segment_prefix(layout.name))))


def _move(layout: LabLayout, hosts: list[HostLayout], bridge: str) -> list[str]:
    moved = []
    for host in hosts:
        for veth in host.veths:
            netlink.move_to_bridge(veth, bridge)
            moved.append(veth)
    return moved


def _remove_empty(layout: LabLayout, state: LabState) -> list[str]:
    removed = []
    for seg in _known_segments(layout, state):
        if not netlink.bridge_ports(seg):
            netlink.delete_link(seg)
            removed.append(seg)
    state.segments = [s for s in state.segments if s not in removed]
    state.save(layout.state_file)
    return removed


def split(layout: LabLayout, state: LabState, names: Sequence[str]) -> dict[str, Any]:
    """Move ``names`` onto a new segment of their own; return what changed."""
    if not names:
        raise InvalidSpec("hosts", [], "one or more lab hosts, e.g. h3 h4")
    hosts = _hosts(layout, names)
    seg = next_segment(layout.name, _known_segments(layout, state))
    state.segments.append(seg)
    state.save(layout.state_file)  # recorded before it exists, like every lab object
    try:
        netlink.create_isolated_bridge(seg)
        links = _move(layout, hosts, seg)
    finally:
        # On failure too: a segment nobody was moved onto does not stay behind.
        removed = _remove_empty(layout, state)
    return {"segment": seg, "hosts": [h.name for h in hosts], "links": links,
            "removed_segments": removed}


def rejoin(layout: LabLayout, state: LabState, names: Sequence[str]) -> dict[str, Any]:
    """Move ``names`` (default: every host) back to the main segment."""
    hosts = _hosts(layout, names) if names else list(layout.hosts)
    links = _move(layout, hosts, layout.bridge)
    removed = _remove_empty(layout, state)
    return {"segment": layout.bridge, "hosts": [h.name for h in hosts], "links": links,
            "removed_segments": removed}
