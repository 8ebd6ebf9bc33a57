"""``ahvlite vm migrate``: live migration as a ``vm.migrate`` task, with a progress bar
that follows the task's messages (what is left, the dirty rate, the iteration, the
expected pause against the cap)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ahvlite.cli.api import WaitOpt
from ahvlite.cli.output import console, emit_json
from ahvlite.errors import InvalidSpec, OperationFailed

MIB = 1024 * 1024

# vm.migrate's parameter (ConvergenceSettings' field) -> the command-line option that
# sets it, so a bad value is reported as the user typed it.
OPTION_OF = {"max_downtime_ms": "--max-downtime-ms", "bandwidth_mib_s": "--bandwidth-mib",
             "max_iterations": "--max-iterations", "timeout_s": "--timeout-s"}


def _as_option(exc: InvalidSpec) -> InvalidSpec:
    if exc.field not in OPTION_OF:
        return exc
    return InvalidSpec(OPTION_OF[exc.field], exc.value, exc.allowed, hint=exc.hint)


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / MIB:.1f}"


def render_result(r: dict[str, Any]) -> None:
    """A migration's result (a ``vm.migrate`` task's) in one line."""
    if r.get("note"):
        console.print(f"[bold]{r['vm']}[/] is on {r['destination']} ({r['note']})",
                      highlight=False)
        return
    console.print(
        f"[bold]{r['vm']}[/] migrated {r['source']} → {r['destination']} in "
        f"{(r['total_ms'] or 0) / 1000:.2f} s: downtime {r['downtime_ms']} ms (QEMU), "
        f"{_mib(r['data_transferred_bytes'])} MiB in {r['iterations']} iterations, "
        f"throttle max {r['throttle_max_pct']}%, "
        f"post-copy {'yes' if r['postcopy_used'] else 'no'}", highlight=False)


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
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    wait: WaitOpt = True,
) -> None:
    """Live-migrate a running VM (peer to peer; persistent on the destination; the
    stream always encrypted with QEMU's TLS, certificates in /etc/pki/qemu). The leader
    runs it; HA guarantee mode must admit the move."""
    from ahvlite.cli.api import session
    from ahvlite.cli.progressbar import task_bar
    from ahvlite.controller.kinds.vm import ABORTED_STEP, MigrateParams
    from ahvlite.errors import error_of
    from ahvlite.spec.errors import build

    params: dict[str, Any] = {
        "name": name, "to": to, "max_downtime_ms": max_downtime_ms,
        "bandwidth_mib_s": bandwidth_mib, "postcopy": postcopy,
        "max_iterations": max_iterations, "timeout_s": timeout_s,
        "auto_converge": not no_auto_converge}
    try:
        build(MigrateParams, **params)  # an instant error, naming the option
    except InvalidSpec as exc:
        raise _as_option(exc) from None
    with session() as c:
        task = c.submit("vm.migrate", params)
        if not wait:
            if json_out:
                emit_json({"task": task.id})
            else:
                console.print(task.id, highlight=False)
            return
        with task_bar(not json_out, f"migrating {name}") as on_progress:
            end = c.wait(task.id, on_progress)
    if end.state != "succeeded":
        what = f"{end.error or end.message or end.state} (task {end.id} {end.state})"
        aborted = end.steps_done.get(ABORTED_STEP)
        if isinstance(aborted, dict):
            raise MigrationGaveUp(what, end.error_hint, aborted)
        raise error_of(end.error_kind, what, end.error_hint)
    result = dict(end.result or {})
    if json_out:
        emit_json(result)
    else:
        render_result(result)


class MigrationGaveUp(OperationFailed):
    """The policy gave the migration up; the VM runs on its source. JSON output carries
    how far it got (``result``)."""

    def __init__(self, message: str, hint: str | None, result: dict[str, Any]) -> None:
        super().__init__(message, hint=hint)
        self.result = result

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "result": self.result}
