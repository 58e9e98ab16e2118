"""``snpe-udo-package-generator``: UDO package skeletons from the SDK's config format.

The same command is ``opendlc udo generate``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from opendlc.cli.runner import run_command
from opendlc.udo_gen.generate import generate_packages


def generate(
    config_path: Path = typer.Option(
        ..., "--config_path", "-p", help="The path to a config file that defines a UDO.", show_default=False
    ),
    output_path: Path = typer.Option(
        None,
        "--output_path",
        "-o",
        help="Path where the package should be saved (default: the config's UDO_PACKAGE_PATH, else here).",
        show_default=False,
    ),
    force_generation: bool = typer.Option(
        False, "-f", "--force-generation", help="Replace an existing package of the same name."
    ),
    debug: bool = typer.Option(
        # Taken off the command line by the runner before parsing (it sets the log level); listed here so
        # that --help shows it as the SDK's tool does.
        False,
        "--debug",
        help="Show debugging information (every file written; tracebacks).",
    ),
) -> None:
    """Generate a UDO (User Defined Operation) package from a config file."""
    del debug
    for package in generate_packages(config_path, output_path, force=force_generation):
        typer.echo(f"generated UDO package {package.name} at {package.root} ({len(package.files)} files)")
        typer.echo(f"  build its host libraries with: make -C {package.root} cpu_x86")


def main(prog: str, argv: list[str]) -> int:
    """Run ``snpe-udo-package-generator`` (named ``prog``) on ``argv``; return the exit status."""
    return run_command(generate, prog, argv)
