"""systemd's ``EnvironmentFile=`` format, read the way systemd reads it: the one place
that parses ``/etc/ahvlite/controller.env`` (a lab host's unit stand-in, ``local up``)."""

from __future__ import annotations

from pathlib import Path


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines, blank lines and ``#``/``;`` comments; a value may be quoted
    with single or double quotes."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out
