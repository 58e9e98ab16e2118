"""``opendlc udo``: user-defined-op packages."""

from __future__ import annotations

import typer

from opendlc.cli.sdk_udo import generate
from opendlc.hookspecs import hookimpl


@hookimpl
def register_commands(app: typer.Typer) -> None:
    udo = typer.Typer(
        help="User-defined-op (UDO) packages.",
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    udo.command("generate")(generate)
    app.add_typer(udo, name="udo")
