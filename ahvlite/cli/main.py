"""Entry point: the typer app, global options, and error -> exit code mapping."""

from __future__ import annotations

import sys

import typer

from ahvlite import __version__
from ahvlite.cli import host as host_cli
from ahvlite.cli import lab as lab_cli
from ahvlite.cli.output import emit_json, err_console
from ahvlite.errors import AhvliteError

app = typer.Typer(
    name="ahvlite", no_args_is_help=True, add_completion=False,
    help="The compute side of Nutanix AHV on ordinary Linux KVM hosts.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
app.add_typer(lab_cli.app, name="lab")
app.add_typer(host_cli.app, name="host")


@app.command()
def version() -> None:
    """Print ahvlite's version."""
    typer.echo(__version__)


def main() -> None:
    json_mode = "--json" in sys.argv
    try:
        app(standalone_mode=True)
    except AhvliteError as exc:
        if json_mode:
            emit_json(exc.to_dict())
        else:
            err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
            if exc.hint:
                err_console.print(f"[yellow]hint:[/] {exc.hint}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
