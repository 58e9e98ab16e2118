"""The drop-in quantizers ``snpe-dlc-quant``, ``snpe-dlc-quantize`` and ``qairt-quantizer``.

Their options are parsed and mapped in :mod:`opendlc.cli.quant_options`, shared with ``opendlc quantize``.
"""

from __future__ import annotations

from opendlc.cli.quant_options import DIALECTS, run_command
from opendlc.cli.runner import run


def main(prog: str, argv: list[str]) -> int:
    """Run the quantizer command ``prog`` (one of the SDK's names) on ``argv``; return the exit status."""
    if prog not in DIALECTS:
        raise ValueError(f"not a quantizer command: {prog}")
    return run(lambda rest: run_command(prog, rest), prog, argv)
