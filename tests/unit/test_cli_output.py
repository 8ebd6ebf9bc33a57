"""What the CLI prints is what it was given: a MAC is no emoji code."""

from __future__ import annotations

from ahvlite.cli.output import console, table


def test_a_mac_with_an_emoji_code_in_it_prints_as_it_is():
    mac = "52:54:00:ab:b6:07"  # ":ab:" is rich's emoji code for the AB button
    with console.capture() as out:
        console.print(table("Allocations", ["mac"], [[mac]]))
        console.print(f"nic {mac}")
    assert out.get().count(mac) == 2
