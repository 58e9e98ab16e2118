"""``opendlc export``: a container as a QDQ ONNX model, an EPContext model + HTP binary, or a QAIRT DLC."""

from __future__ import annotations

from pathlib import Path

import typer

from opendlc import container as dlc
from opendlc.hookspecs import hookimpl
from opendlc.htp.export import FORMATS, default_output, export


def export_command(
    model: Path = typer.Argument(..., help="The container (.dlc) or ONNX model to export."),
    fmt: str = typer.Option(..., "--format", help=f"One of {', '.join(FORMATS)}."),
    output: Path = typer.Option(None, "--output", "-o", help="The file to write (default beside MODEL)."),
    soc: str = typer.Option(None, "--soc", help="ep-context / qnn-dlc: the SoC (default sm8650)."),
) -> None:
    """Export a quantized container: qdq (CPU simulation), ep-context (QNN EP, device), qnn-dlc (QAIRT)."""
    source = dlc.load(model)
    out = output or default_output(model, fmt)
    for path in export(source, fmt, out, soc=soc):
        typer.echo(f"wrote {path}")


@hookimpl
def register_commands(app: typer.Typer) -> None:
    app.command("export")(export_command)
