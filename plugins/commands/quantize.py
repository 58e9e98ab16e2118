"""``opendlc quantize``: qairt-quantizer's options (and ``--dump_encoding_json_version``).

The options are parsed by the same code as the drop-in SDK quantizers (:mod:`opendlc.cli.quant_options`),
so this command hands its arguments over untouched.
"""

from __future__ import annotations

import typer

from opendlc.cli.quant_options import OPENDLC_QUANTIZE, run_command
from opendlc.hookspecs import hookimpl


def quantize(ctx: typer.Context) -> None:
    """Quantize a float container or ONNX model on calibration inputs (qairt-quantizer's options)."""
    status = run_command(OPENDLC_QUANTIZE, list(ctx.args), prog="opendlc quantize")
    if status:
        raise typer.Exit(status)


@hookimpl
def register_commands(app: typer.Typer) -> None:
    app.command(
        "quantize",
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    )(quantize)
