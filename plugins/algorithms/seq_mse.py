"""``seq_mse``: weight encoding ranges chosen by each layer's output error (public in
:mod:`opendlc.quant.seq_mse`)."""

from __future__ import annotations

import logging
from typing import Any

import onnx

from opendlc.algorithms import Algorithm, Phase, calibration_context
from opendlc.hookspecs import hookimpl
from opendlc.quant.bias_correction import targets as bias_targets
from opendlc.quant.seq_mse import seq_mse

log = logging.getLogger("opendlc.plugins.algorithms.seq_mse")


class SeqMse(Algorithm):
    name = "seq_mse"
    description = (
        "sequential MSE: each Conv/ConvTranspose/Gemm/MatMul weight's range (per channel) minimises the "
        "layer's output error on calibration samples, with inputs from the model quantized so far"
    )
    phase = Phase.AFTER_CALIBRATION

    def apply(self, model: onnx.ModelProto, context: Any) -> onnx.ModelProto:
        context = calibration_context(context, self.name)
        order = list(getattr(context.options, "apply_algorithms", []))
        corrected: list[str] = []
        if self.name in order and "bias_correction" in order:
            if order.index("bias_correction") < order.index(self.name):
                # bias correction measured the rounding error of the encodings seq_mse now replaces
                log.warning(
                    "seq_mse runs after bias_correction here; list seq_mse first so biases are "
                    "corrected for the chosen weight encodings"
                )
            else:  # the mean output shift will be corrected: search for the smallest error around it
                corrected = [t.weight for t in bias_targets(model, context.encodings)]
        result = seq_mse(model, context.encodings, context.samples, context.options, bias_corrected=corrected)
        context.report.extend(result.report())
        return model


@hookimpl
def register_algorithms() -> list[Algorithm]:
    return [SeqMse()]
