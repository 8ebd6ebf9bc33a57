"""Progress bars for long tasks followed through the API: a task's percentage and
message (a migration's line says what is left, the dirty rate, the iteration and the
expected pause), and the bytes of an upload. Silent (no-op callbacks) for JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ahvlite.cli.output import err_console


@contextmanager
def task_bar(enabled: bool, title: str, *,
             log: bool = False) -> Iterator[Callable[[int, str], None]]:
    """``on_progress(pct, message)`` for :func:`ahvlite.cli.api.run_task`: a bar at the
    task's percentage with its latest message (with ``log``, each message is also
    printed above the bar: one line per deployed VM, say)."""
    if not enabled:
        yield lambda _pct, _msg: None
        return
    if not err_console.is_terminal:  # a log, not a screen: the messages, no bar
        yield _lines() if log else (lambda _pct, _msg: None)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                   TextColumn("{task.description}", markup=False), console=err_console)
    task = bar.add_task(title, total=100)
    last = [""]

    def update(pct: int, message: str) -> None:
        if log and message and message != last[0]:
            bar.console.print(message, highlight=False, markup=False)
        last[0] = message
        bar.update(task, completed=pct, description=message or title)

    with bar:
        yield update


def _lines() -> Callable[[int, str], None]:
    last = [""]

    def line(_pct: int, message: str) -> None:
        if message and message != last[0]:
            err_console.print(message, highlight=False, markup=False)
        last[0] = message

    return line


@contextmanager
def byte_bar(enabled: bool, title: str, total: int) -> Iterator[Callable[[int], None]]:
    """``on_bytes(sent)`` for an upload of ``total`` bytes (on a terminal)."""
    if not enabled or not err_console.is_terminal:
        yield lambda _sent: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), console=err_console)
    task = bar.add_task(title, total=total)
    with bar:
        yield lambda sent: bar.update(task, completed=sent)
