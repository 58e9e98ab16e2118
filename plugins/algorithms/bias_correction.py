"""``bias_correction``: empirical bias correction after calibration (public in
:mod:`opendlc.quant.bias_correction`)."""

from __future__ import annotations

from typing import Any

import onnx

from opendlc.algorithms import Algorithm, Phase, calibration_context
from opendlc.hookspecs import hookimpl
from opendlc.quant.bias_correction import correct_biases


class BiasCorrection(Algorithm):
    name = "bias_correction"
    description = (
        "empirical bias correction: subtract from each Conv/Gemm bias the mean output shift quantization "
        "causes, measured on calibration samples"
    )
    phase = Phase.AFTER_CALIBRATION

    def apply(self, model: onnx.ModelProto, context: Any) -> onnx.ModelProto:
        context = calibration_context(context, self.name)
        corrected, report = correct_biases(model, context.encodings, context.samples)
        context.report.extend(report)
        return corrected


@hookimpl
def register_algorithms() -> list[Algorithm]:
    return [BiasCorrection()]
