"""``cle``: cross-layer equalization of the float graph before calibration (the math is public in
:mod:`opendlc.graph.equalize`, so another package can reuse it)."""

from __future__ import annotations

import logging
from typing import Any

import onnx

from opendlc.algorithms import Algorithm, Phase
from opendlc.graph.equalize import equalize
from opendlc.hookspecs import hookimpl

log = logging.getLogger("opendlc.algorithms.cle")


class CrossLayerEqualization(Algorithm):
    name = "cle"
    description = (
        "cross-layer equalization: fold BatchNorm, balance per-channel weight ranges of "
        "Conv -> [Relu|LeakyRelu|PRelu] -> Conv pairs, absorb high biases where exact (float function kept)"
    )
    phase = Phase.BEFORE_CALIBRATION

    def apply(self, model: onnx.ModelProto, context: Any) -> onnx.ModelProto:
        samples = context.get("samples") if isinstance(context, dict) else None
        result = equalize(model, samples=samples)
        for line in result.report:
            log.info("cle: %s", line)
        if isinstance(context, dict) and isinstance(context.get("report"), list):
            context["report"].extend(f"cle: {line}" for line in result.report)
        return result.model


@hookimpl
def register_algorithms() -> list[Algorithm]:
    return [CrossLayerEqualization()]
