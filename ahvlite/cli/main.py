"""Entry point: the typer app, global options, and error -> exit code mapping."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from ahvlite import __version__
from ahvlite.cli import ads as ads_cli
from ahvlite.cli import agent as agent_cli
from ahvlite.cli import auth as auth_cli
from ahvlite.cli import cluster as cluster_cli
from ahvlite.cli import controller as controller_cli
from ahvlite.cli import cvm as cvm_cli
from ahvlite.cli import ha as ha_cli
from ahvlite.cli import host as host_cli
from ahvlite.cli import image as image_cli
from ahvlite.cli import lab as lab_cli
from ahvlite.cli import net as net_cli
from ahvlite.cli import pki as pki_cli
from ahvlite.cli import stats as stats_cli
from ahvlite.cli import storage as storage_cli
from ahvlite.cli import task as task_cli
from ahvlite.cli import template as template_cli
from ahvlite.cli import vm as vm_cli
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
app.add_typer(controller_cli.app, name="controller")
app.add_typer(agent_cli.app, name="agent")
app.add_typer(task_cli.app, name="task")
app.command(name="stats")(stats_cli.stats)
app.add_typer(net_cli.app, name="net")
app.add_typer(vm_cli.app, name="vm")
app.add_typer(image_cli.app, name="image")
app.add_typer(template_cli.app, name="template")
app.add_typer(cluster_cli.app, name="cluster")
app.add_typer(ads_cli.app, name="ads")
app.add_typer(cvm_cli.app, name="cvm")
app.add_typer(ha_cli.app, name="ha")
app.add_typer(auth_cli.app, name="auth")
app.add_typer(pki_cli.app, name="pki")
app.add_typer(storage_cli.app, name="storage")


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
            # Messages quote user input: never let it read as rich markup.
            err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            if exc.hint:
                err_console.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
