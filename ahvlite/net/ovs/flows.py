"""A bridge's OpenFlow table, installed whole through ``ovs-ofctl`` (the only caller).

``install`` hands the complete table to ``ovs-ofctl --bundle replace-flows``: it diffs
against the switch and sends only the changes, as ONE atomic OpenFlow 1.4 bundle, so
the switch never runs a half-updated pipeline. Flows always travel on stdin and the
argv is fixed, so nothing in a flow can become an option.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

from ahvlite.errors import InvalidSpec, MissingDependency, OperationFailed, OperationTimeout

OFCTL = "ovs-ofctl"
PROTOCOL = "OpenFlow14"  # bundles need 1.4; the flow text is written for it
TIMEOUT_S = 30
_BRIDGE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_UNIX_RE = re.compile(r"^unix:/[A-Za-z0-9_./+-]+$")


def _switch(switch: str) -> str:
    """A bridge name (ovs-vswitchd's own management socket), or ``unix:/path.mgmt``."""
    if _BRIDGE_RE.fullmatch(switch) or _UNIX_RE.fullmatch(switch):
        return switch
    raise InvalidSpec("switch", switch, "an OVS bridge name or unix:/path/to/BRIDGE.mgmt")


def _ofctl(args: list[str], stdin: str | None = None, *, ok: tuple[int, ...] = (0,)) -> str:
    argv = [OFCTL, "-O", PROTOCOL, *args]
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise MissingDependency(f"{OFCTL} is not installed",
                                hint="install the Debian package openvswitch-common") from None
    except subprocess.TimeoutExpired:
        raise OperationTimeout(f"{' '.join(argv)} did not finish in {TIMEOUT_S} s") from None
    if done.returncode not in ok:
        msg = done.stderr.strip() or f"exit {done.returncode}"
        raise OperationFailed(f"{' '.join(argv)}: {msg}")
    return done.stdout


def _text(lines: Sequence[str]) -> str:
    for line in lines:
        if "\n" in line or "\r" in line:
            raise InvalidSpec("flow", line, "one flow per line")
    return "".join(f"{line}\n" for line in lines)


def diff(lines: Sequence[str], *, switch: str = "br0") -> list[str]:
    """What installing ``lines`` would change: ovs-ofctl's diff, ``-``/``+`` lines."""
    # diff-flows has no "-": a source starting with "/" is read as a file.
    # Exit 2 means "they differ", as diff(1)'s 1 does; the differences are on stdout.
    out = _ofctl(["diff-flows", _switch(switch), "/dev/stdin"], _text(lines), ok=(0, 2))
    return [line for line in out.splitlines() if line.strip()]


def install(lines: Sequence[str], *, switch: str = "br0") -> list[str]:
    """Make the switch's table exactly ``lines``; return the changes (empty: none sent).

    An unchanged table sends nothing: no flow is re-added, no counter reset.
    """
    changes = diff(lines, switch=switch)
    if changes:
        _ofctl(["--bundle", "replace-flows", _switch(switch), "-"], _text(lines))
    return changes


def dump(*, switch: str = "br0", cookie: int | None = None,
         mask: int = 0xFFFFFFFFFFFFFFFF) -> list[str]:
    """The switch's flows (optionally those whose cookie matches ``cookie/mask``)."""
    args = ["dump-flows", "--no-stats", _switch(switch)]
    if cookie is not None:
        args.append(f"cookie={cookie:#x}/{mask:#x}")
    return [line.strip() for line in _ofctl(args).splitlines()
            if line.strip() and not line.startswith(("NXST_", "OFPST_"))]
