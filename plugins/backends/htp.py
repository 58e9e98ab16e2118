"""The HTP backend: what it supports, and the encodings its runtime needs.

Constraints (from QNN HTP's operator definitions, as onnxruntime's QNN quantization helpers apply them):
- 16-bit Sigmoid outputs use the fixed range [0, 1) (scale 2^-16, offset 0), 16-bit Tanh [-1, 1)
  (scale 2^-15, offset -2^15); at 8 bits their calibrated ranges stand;
- data-movement ops (Reshape, Transpose, MaxPool, Slice, ...) keep their input's encoding, and a Concat's
  private inputs share its output encoding, so nothing is requantized inside them;
- per-channel weights are symmetric (signed, offset 0).
"""

from __future__ import annotations

import logging
from typing import Any

import onnx

from opendlc.encodings import EncodingSet
from opendlc.hookspecs import hookimpl
from opendlc.quant.constraints import (
    fixed_output,
    share_concat_encoding,
    share_input_encoding,
    symmetric_per_channel_weights,
)
from opendlc.quant.propagate import DATA_MOVEMENT
from opendlc.schemas import Encoding
from opendlc.targets import Backend

log = logging.getLogger("opendlc.backend.htp")

# QNN's data-movement ops that must keep their input's encoding: the math-invariant ops, less those that
# reduce or resample (ReduceMax/Min, TopK, Resize, Upsample) or gather by index tensors HTP requantizes.
SHARED = DATA_MOVEMENT - {
    "GatherElements",
    "GatherND",
    "ReduceMax",
    "ReduceMin",
    "Resize",
    "Upsample",
    "TopK",
}


def _unit_interval(bw: int) -> Encoding | None:
    if bw != 16:
        return None
    scale = 2.0**-bw
    return Encoding(bw, scale, 0, 0.0, (2**bw - 1) * scale, False, False)


def _signed_unit_interval(bw: int) -> Encoding | None:
    if bw != 16:
        return None
    scale = 2.0 ** -(bw - 1)
    offset = -(2 ** (bw - 1))
    return Encoding(bw, scale, offset, -1.0, (2**bw - 1 + offset) * scale, False, False)


FIXED = {"Sigmoid": _unit_interval, "Tanh": _signed_unit_interval}


class HtpBackend(Backend):
    def constrain_encodings(self, model: onnx.ModelProto, encodings: Any) -> Any:
        assert isinstance(encodings, EncodingSet)
        counts = {
            "fixed output": fixed_output(model, encodings, FIXED),
            "shared across data movement": share_input_encoding(model, encodings, SHARED),
            "shared across Concat": share_concat_encoding(model, encodings),
            "per-channel weights made symmetric": symmetric_per_channel_weights(encodings),
        }
        for what, n in counts.items():
            if n:
                log.info("HTP constraints: %d encodings %s", n, what)
        return encodings


@hookimpl
def register_backends() -> list[Backend]:
    return [
        HtpBackend(
            name="HTP",
            description="Hexagon Tensor Processor (QNN HTP): fixed-point 8/16-bit, float16",
            weight_bitwidths=(4, 8, 16),
            activation_bitwidths=(8, 16),
            bias_bitwidths=(8, 32),
            per_channel=True,
            per_row=True,
            float16=True,
        )
    ]
