"""Entry point: the command groups, loaded only when used, and error -> exit code.

Each noun lives in its own module (``ahvlite/cli/<noun>.py``, a typer app) and is
imported only when its command runs: ``ahvlite --help`` and ``ahvlite vm list`` do not
pay for the lab's netlink, ansible or libvirt imports. The list below is the one place
that names them, with the line ``--help`` shows for each.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
from typer.core import TyperGroup

# name: (module, attribute, summary). Attribute: a typer app, or a function that is one
# command of its own.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "local": ("ahvlite.cli.local", "app", "This machine as a one-host cluster (a first "
              "try, no ZooKeeper)."),
    "lab": ("ahvlite.cli.lab", "app", "Build, inspect and remove a local multi-host lab."),
    "host": ("ahvlite.cli.host", "app", "Hosts: list, show, facts, add, remove, "
             "maintenance, provision."),
    "vm": ("ahvlite.cli.vm", "app", "VMs: create, power, migrate, disks, NICs, console."),
    "image": ("ahvlite.cli.image", "app", "Images: import, list."),
    "template": ("ahvlite.cli.template", "app", "Versioned VM templates: create, deploy."),
    "net": ("ahvlite.cli.net", "app", "Host networking and VLAN networks."),
    "cluster": ("ahvlite.cli.cluster", "app", "The cluster: apply, export, CPU level."),
    "ha": ("ahvlite.cli.ha", "app", "VM high availability: mode, reservations, status."),
    "ads": ("ahvlite.cli.ads", "app", "ADS, the dynamic scheduler: plans, runs, rules."),
    "cvm": ("ahvlite.cli.cvm", "app", "The CVM of each host (storage controllers by VFIO)."),
    "task": ("ahvlite.cli.task", "app", "Tasks the leader runs: submit, list, show, wait."),
    "stats": ("ahvlite.cli.stats", "stats", "Per-host and per-VM utilization."),
    "controller": ("ahvlite.cli.controller", "app", "The controller daemon: run, status."),
    "agent": ("ahvlite.cli.agent", "app", "The host agent (HA fencing) of one host."),
    "netagent": ("ahvlite.cli.netagent", "app", "The DHCP data plane of one host "
                 "(managed networks)."),
    "auth": ("ahvlite.cli.auth", "app", "Who you are to the API; bearer tokens."),
    "pki": ("ahvlite.cli.pki", "app", "The cluster CA: client certificates."),
    "storage": ("ahvlite.cli.storage", "app", "Shared storage: the iSCSI path's targets "
                "and sessions."),
    "version": ("ahvlite.cli.main", "version", "Print ahvlite's version."),
}


def version() -> None:
    """Print ahvlite's version."""
    from ahvlite import __version__

    typer.echo(__version__)


def _command(name: str, target: Any) -> Any:
    cmd: Any
    if isinstance(target, typer.Typer):
        target._add_completion = False  # a sub-app: no shell-completion options of its own
        # Always a group, even of one command: `ahvlite agent run`, as the unit runs it.
        cmd = typer.main.get_group(target)
    else:
        one = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        one.command(name=name)(target)
        cmd = typer.main.get_command(one)
    cmd.name = name
    return cmd


class LazyGroup(TyperGroup):
    """The top level: commands imported when asked for, listed without importing."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        return _command(cmd_name, getattr(importlib.import_module(module), attr))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        # Plain text, no rich panels: a listing that needs no command imported.
        formatter.write_usage(ctx.command_path, "COMMAND [ARGS]...")
        formatter.write_paragraph()
        formatter.write_text(self.help or "")
        with formatter.section("Options"):
            formatter.write_dl([("-h, --help", "Show this message and exit.")])
        with formatter.section("Commands"):
            formatter.write_dl([(n, summary) for n, (_, _, summary) in COMMANDS.items()])


app = LazyGroup(name="ahvlite", help="The compute side of Nutanix AHV on ordinary Linux KVM "
                "hosts.", no_args_is_help=True,
                context_settings={"help_option_names": ["-h", "--help"]})


def main() -> None:
    from ahvlite.errors import AhvliteError

    json_mode = "--json" in sys.argv
    try:
        app(standalone_mode=True)
    except AhvliteError as exc:
        from rich.markup import escape

        from ahvlite.cli.output import emit_json, err_console

        if json_mode:
            emit_json(exc.to_dict())
        else:
            # Messages quote user input: never let it read as rich markup.
            err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            if exc.hint:
                err_console.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
