"""Entry points of the drop-in SDK commands.

Each command is implemented by a module that a later part of opendlc provides; until then it exits 1
saying which capability is missing.
"""

from __future__ import annotations

import importlib
import sys

_IMPLEMENTATIONS = {
    "snpe-dlc-quant": ("opendlc.cli.sdk_quant", "quantization"),
    "snpe-dlc-quantize": ("opendlc.cli.sdk_quant", "quantization"),
    "qairt-quantizer": ("opendlc.cli.sdk_quant", "quantization"),
    "snpe-dlc-graph-prepare": ("opendlc.cli.sdk_prepare", "HTP graph preparation"),
    "snpe-udo-package-generator": ("opendlc.cli.sdk_udo", "UDO package generation"),
}


def _dispatch(prog: str) -> None:
    module_name, capability = _IMPLEMENTATIONS[prog]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"{prog}: error: {capability} is not available in this version of opendlc", file=sys.stderr)
        sys.exit(1)
    sys.exit(module.main(prog, sys.argv[1:]))


def snpe_dlc_quant() -> None:
    _dispatch("snpe-dlc-quant")


def snpe_dlc_quantize() -> None:
    _dispatch("snpe-dlc-quantize")


def qairt_quantizer() -> None:
    _dispatch("qairt-quantizer")


def snpe_dlc_graph_prepare() -> None:
    _dispatch("snpe-dlc-graph-prepare")


def snpe_udo_package_generator() -> None:
    _dispatch("snpe-udo-package-generator")
