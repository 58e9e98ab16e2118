"""Running a command the way every opendlc tool runs: one-line errors, exit codes, no tracebacks."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any

import typer

from opendlc.cli.logging_options import HELP as LOG_HELP
from opendlc.cli.logging_options import configure_logging, debug_enabled, split_log_args
from opendlc.errors import OpendlcError


def run(invoke: Callable[[list[str]], object], prog: str, argv: list[str]) -> int:
    """Split the logging options off ``argv``, then ``invoke(rest)``; return the exit status.

    0 on success, 1 for failures, 2 for usage errors, 130 when interrupted.  ``invoke`` is typically a
    typer app called with ``standalone_mode=False``, so its usage errors arrive here as exceptions.
    """
    try:
        settings, rest = split_log_args(argv)
        configure_logging(settings, prog)
        result = invoke(rest)
        return result if isinstance(result, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print(f"{prog}: aborted", file=sys.stderr)
        return 130
    except OpendlcError as e:
        if debug_enabled():
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # the command parser's usage errors
            print(f"{prog}: error: {e.format_message()}", file=sys.stderr)
            return int(e.exit_code)
        if debug_enabled():  # a bug of ours: still one line, the traceback with --debug
            traceback.print_exc()
        logging.getLogger("opendlc").debug("internal error", exc_info=True)
        print(
            f"{prog}: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def typer_app(prog: str, **settings: Any) -> typer.Typer:
    """A typer app as every opendlc program makes it: -h/--help, plain help text, no shell completion,
    errors left to :func:`run` (one line each)."""
    return typer.Typer(
        name=prog,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
        **settings,
    )


def run_command(command: Callable[..., object], prog: str, argv: list[str]) -> int:
    """Run one typer ``command`` as the program ``prog`` (a drop-in SDK tool) on ``argv``."""
    app = typer_app(prog)
    app.command(name=prog, epilog="\b\n" + LOG_HELP)(command)
    return run(lambda rest: app(args=rest, prog_name=prog, standalone_mode=False), prog, argv)
