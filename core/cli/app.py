"""The ``opendlc`` command line: a typer app whose every subcommand comes from a plugin."""

from __future__ import annotations

import sys

import typer

from opendlc import __version__
from opendlc.cli.logging_options import HELP as LOG_HELP
from opendlc.cli.runner import run, typer_app
from opendlc.errors import OpendlcError
from opendlc.plugin_manager import get_plugin_manager

PROG = "opendlc"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"opendlc {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    """The root app with every plugin's subcommands added."""
    app = typer_app(PROG, no_args_is_help=True, epilog="\b\n" + LOG_HELP)  # \b: keep the lines as written

    @app.callback()
    def root(
        version: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ) -> None:
        """Quantize, prepare for Qualcomm HTP, and package user-defined ops -- without the SDK."""

    get_plugin_manager().add_commands(app)
    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``opendlc`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        app = build_app()
    except Exception as e:  # a broken plugin gets one line too
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code if isinstance(e, OpendlcError) else 1)
    sys.exit(run(lambda rest: app(args=rest, prog_name=PROG, standalone_mode=False), PROG, argv))
