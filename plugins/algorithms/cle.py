"""``cle``: cross-layer equalization of the float graph before calibration (the math is public in
:mod:`opendlc.graph.equalize`, so another package can reuse it)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx

from opendlc.algorithms import Algorithm, Phase
from opendlc.graph.bias_grid import BiasGrid
from opendlc.graph.equalize import equalize
from opendlc.hookspecs import hookimpl
from opendlc.plugin_manager import get_plugin_manager
from opendlc.quant.encode import Quantizers, own_bias_encoding
from opendlc.quant.options import QuantizerOptions

log = logging.getLogger("opendlc.algorithms.cle")


class CrossLayerEqualization(Algorithm):
    name = "cle"
    description = (
        "cross-layer equalization: fold BatchNorm, balance per-channel weight ranges of "
        "Conv -> [Relu|LeakyRelu|PRelu] -> Conv pairs, absorb high biases where exact, put 8-bit biases on "
        "their grid (float function kept)"
    )
    phase = Phase.BEFORE_CALIBRATION

    def apply(self, model: onnx.ModelProto, context: Any) -> onnx.ModelProto:
        samples = context.get("samples") if isinstance(context, dict) else None
        options = context.get("options") if isinstance(context, dict) else None
        result = equalize(model, samples=samples, bias_grid=bias_grid(options))
        for line in result.report:
            log.info("cle: %s", line)
        if isinstance(context, dict) and isinstance(context.get("report"), list):
            context["report"].extend(f"cle: {line}" for line in result.report)
        return result.model


def bias_grid(options: QuantizerOptions | None) -> BiasGrid | None:
    """The quantizer's quantize-dequantize of a bias tensor when biases get a narrow encoding of their
    own (below 32 bits, e.g. the SDK's default 8): ``cle`` then puts equalized biases on it.  32-bit
    biases (input x weight scale) round far below anything measurable: None."""
    if options is None or options.bias_bitwidth >= 32:
        return None
    q = Quantizers.resolve(options, get_plugin_manager())

    def grid(values: np.ndarray) -> np.ndarray:
        return np.asarray(own_bias_encoding(values, q).quantize_dequantize(values), dtype=np.float64)

    return grid


@hookimpl
def register_algorithms() -> list[Algorithm]:
    return [CrossLayerEqualization()]
