"""``ahvlite auth``: who the API takes us for, and its bearer tokens.

Every command here talks to the API with the client config (``$AHVLITE_CONFIG`` or
``~/.config/ahvlite/client.yaml``, overridden by ``AHVLITE_API``, ``AHVLITE_CA``,
``AHVLITE_CERT``/``AHVLITE_KEY`` or ``AHVLITE_TOKEN``). Creating and revoking tokens
needs a client certificate of the cluster CA (``ahvlite pki issue-client``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from ahvlite.cli.api import client
from ahvlite.cli.output import console, emit_json, err_console, table

app = typer.Typer(no_args_is_help=True, help="Who you are to the API; its bearer tokens.")
token_app = typer.Typer(no_args_is_help=True,
                        help="Bearer tokens: create (shown once), list, revoke.")
app.add_typer(token_app, name="token")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NameArg = Annotated[str, typer.Argument(help="Token name (letters, digits, . _ -).")]


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


@app.command()
def whoami(json_out: JsonOpt = False) -> None:
    """The principal the API sees (cert:CN or token:NAME)."""
    with client() as c:
        me = c.whoami()
    if json_out:
        emit_json(me.model_dump())
    else:
        console.print(f"{me.principal} (by {me.method})", highlight=False)


@token_app.command()
def create(
    name: NameArg,
    ttl_days: Annotated[float | None, typer.Option(
        "--ttl-days", help="Expire after this many days (default: never).", min=0.001,
        max=3650, show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """A new token; printed once (the cluster keeps only its hash)."""
    with client() as c:
        made = c.create_token(name, None if ttl_days is None else ttl_days * 86400)
    if json_out:
        emit_json(made.model_dump())
        return
    console.print(made.token, highlight=False, soft_wrap=True)
    err_console.print(f"token {made.name!r} created by {made.created_by}"
                      + (f", expires {_when(made.expires_at)}" if made.expires_at else "")
                      + "; it is not shown again: keep it (AHVLITE_TOKEN or token_file)",
                      highlight=False)


@token_app.command(name="list")
def list_(json_out: JsonOpt = False) -> None:
    """Tokens by name (never the tokens themselves)."""
    with client() as c:
        tokens = c.tokens()
    if json_out:
        emit_json([t.model_dump() for t in tokens])
        return
    console.print(table("tokens", ["name", "created", "by", "expires"],
                        [[t.name, _when(t.created_at), t.created_by, _when(t.expires_at)]
                         for t in tokens]))


@token_app.command()
def revoke(name: NameArg, json_out: JsonOpt = False) -> None:
    """Revoke a token: requests with it are refused from now on."""
    with client() as c:
        c.revoke_token(name)
    if json_out:
        emit_json({"revoked": name})
    else:
        console.print(f"token {name!r} revoked", highlight=False)
