"""Rendering: rich for people, JSON for scripts, and errors without tracebacks."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table

# No emoji codes: a MAC such as 52:54:00:ab:b6:07 holds ":ab:", which rich would print
# as an emoji.
console = Console(emoji=False)
err_console = Console(stderr=True, log_path=False, emoji=False)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return t


@contextmanager
def progress(enabled: bool, first: str) -> Iterator[Any]:
    """A spinner whose text follows the steps; silent when output is JSON."""
    if not enabled:
        yield lambda _msg: None
        return
    with err_console.status(first) as status:
        def report(msg: str) -> None:
            err_console.log(msg)
            status.update(msg)
        yield report
