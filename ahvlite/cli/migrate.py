"""``ahvlite vm migrate``: live migration with a progress bar from libvirt's job stats."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ahvlite.cli.context import ClusterOpt, load
from ahvlite.cli.output import console, emit_json, err_console
from ahvlite.cluster.convergence import ConvergenceSettings
from ahvlite.cluster.migrate import MigrateResult, MigrationProgress, migrate_vm
from ahvlite.errors import InvalidSpec

MIB = 1024 * 1024

ProgressFn = Callable[[MigrationProgress], None]

# ConvergenceSettings field -> the command-line option that sets it, so a bad value is
# reported as the user typed it.
OPTION_OF = {"max_downtime_ms": "--max-downtime-ms", "bandwidth_mib_s": "--bandwidth-mib",
             "max_iterations": "--max-iterations", "timeout_s": "--timeout-s"}


def settings_from_options(**fields: Any) -> ConvergenceSettings:
    """ConvergenceSettings from CLI options; errors name the option, not the field."""
    try:
        return ConvergenceSettings(**fields)
    except InvalidSpec as exc:
        if exc.field not in OPTION_OF:
            raise
        raise InvalidSpec(OPTION_OF[exc.field], exc.value, exc.allowed,
                          hint=exc.hint) from None


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / MIB:.1f}"


@contextmanager
def migration_bar(enabled: bool) -> Iterator[ProgressFn | None]:
    """A rich progress bar per VM (data copied of the VM's memory), with what is left,
    the dirty rate, the iteration and the expected downtime; None when disabled."""
    if not enabled:
        yield None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(),
                   TextColumn("left {task.fields[left]} MiB"),
                   TextColumn("dirty {task.fields[dirty]} MiB/s"),
                   TextColumn("iter {task.fields[iteration]}"),
                   TextColumn("downtime ~{task.fields[downtime]}/{task.fields[cap]} ms"),
                   TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                   console=err_console, transient=False)
    tasks: dict[str, TaskID] = {}

    def update(p: MigrationProgress) -> None:
        if p.vm not in tasks:
            tasks[p.vm] = bar.add_task(f"{p.vm} {p.source}→{p.destination}", total=None,
                                       left="?", dirty="?", iteration=0, downtime="?",
                                       cap=p.max_downtime_ms, note="")
        total = p.data_total_bytes or 0
        done = total - (p.data_remaining_bytes or 0)
        notes = [n for n, on in (("stalled", p.stalled),
                                 (f"throttle {p.throttle_pct}%", p.throttle_pct > 0),
                                 ("post-copy", p.postcopy)) if on]
        bar.update(tasks[p.vm], total=total or None, completed=max(done, 0),
                   left=_mib(p.data_remaining_bytes), dirty=_mib(p.dirty_rate_bytes_s),
                   iteration=p.iteration,
                   downtime="?" if p.expected_downtime_ms is None else p.expected_downtime_ms,
                   cap=p.max_downtime_ms, note=" ".join(notes))

    with bar:
        yield update


def render_result(r: MigrateResult) -> None:
    console.print(
        f"[bold]{r.vm}[/] migrated {r.source} → {r.destination} in "
        f"{(r.total_ms or 0) / 1000:.2f} s: downtime {r.downtime_ms} ms (QEMU), "
        f"{_mib(r.data_transferred_bytes)} MiB in {r.iterations} iterations, "
        f"throttle max {r.throttle_max_pct}%, post-copy {'yes' if r.postcopy_used else 'no'}",
        highlight=False)


def migrate(
    name: Annotated[str, typer.Argument(help="VM name.")],
    to: Annotated[str | None, typer.Option(
        "--to", help="Destination host (default: most free memory that passes the "
                     "checks).")] = None,
    max_downtime_ms: Annotated[int, typer.Option(
        "--max-downtime-ms", help="Longest pause the guest may see (the stun window cap).")]
    = 300,
    bandwidth_mib: Annotated[int | None, typer.Option(
        "--bandwidth-mib", help="Limit the migration stream to this many MiB/s.")] = None,
    postcopy: Annotated[bool, typer.Option(
        "--postcopy", help="Switch to post-copy when pre-copy stops making progress.")]
    = False,
    max_iterations: Annotated[int, typer.Option(
        "--max-iterations", help="Give up after this many memory copy iterations.")] = 50,
    timeout_s: Annotated[float, typer.Option(
        "--timeout-s", help="Give up after this many seconds.")] = 600,
    no_auto_converge: Annotated[bool, typer.Option(
        "--no-auto-converge", help="Never throttle the guest's vCPUs.")] = False,
    cluster: ClusterOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Live-migrate a running VM (peer to peer; persistent on the destination; the
    stream always encrypted with QEMU's TLS, certificates in /etc/pki/qemu)."""
    _path, cspec = load(cluster)
    settings = settings_from_options(
        max_downtime_ms=max_downtime_ms, bandwidth_mib_s=bandwidth_mib, postcopy=postcopy,
        max_iterations=max_iterations, timeout_s=timeout_s,
        auto_converge=not no_auto_converge)
    with migration_bar(not json_out) as on_progress:
        result = migrate_vm(cspec, name, to=to, settings=settings, on_progress=on_progress)
    if json_out:
        emit_json(result.to_dict())
    else:
        render_result(result)
