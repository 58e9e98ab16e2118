"""The HTP backend: what it supports, and the encodings its runtime needs.

Constraints (from QNN HTP's operator definitions, as onnxruntime's QNN quantization helpers apply them):
- 16-bit Sigmoid and HardSigmoid outputs use the fixed range [0, 1) (scale 2^-16, offset 0), 16-bit
  Tanh [-1, 1) (scale 2^-15, offset -2^15); at 8 bits their calibrated ranges stand;
- data-movement ops (Reshape, Transpose, MaxPool, Slice, ...) keep their input's encoding, and a Concat's
  private inputs share its output encoding, so nothing is requantized inside them;
- per-channel weights are symmetric (signed, offset 0);
- with 16-bit activations, a Conv/Gemm/MatMul's requantization multiplier (input scale x weight scale /
  output scale) is at least 2^-24: below that HTP outputs garbage (measured on the HTP emulator: the
  lowest integer), so the weight scale of such a channel (weights all about zero) is widened.

Its arithmetic differs from onnxruntime CPU's on a QDQ model, so the CPU simulation of an HTP container is
rewritten to match (:mod:`opendlc.plugins.backends.htp_qdq`): 8-bit Conv/Gemm/MatMul weights are held as
HTP holds them (signed int8 per output channel), and a MatMul of two 16-bit activations runs as 16 x 8 bits.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import onnx

from opendlc.encodings import EncodingSet
from opendlc.hookspecs import hookimpl
from opendlc.plugins.backends.htp_qdq import eight_bit_second_operands, hold_weights_as_htp
from opendlc.quant.constraints import (
    consumers,
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


# HardSigmoid too: HTP's 16-bit HardSigmoid writes its output on the [0, 1) grid whatever encoding it was
# given (measured: a calibrated [0, 0.72] encoding read back 0.72x the value).
FIXED = {"Sigmoid": _unit_interval, "HardSigmoid": _unit_interval, "Tanh": _signed_unit_interval}

# The smallest requantization multiplier HTP computes with 16-bit activations (2^-24 works, 0.95 x 2^-24
# does not); a little headroom for float32 scales.
MIN_MULTIPLIER_16 = 2.0**-24 * 1.001
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FUSED = ("Relu", "Clip")  # HTP runs these inside the op, with their output encoding


def _output_encoding(
    readers_of: Callable[[], dict[str, list[onnx.NodeProto]]], name: str, encodings: EncodingSet
) -> Any:
    """The encoding HTP requantizes ``name`` to: its own, or that of a Relu/Clip it feeds alone
    (``readers_of`` gives the model's readers map, built only if needed)."""
    while name not in encodings:
        readers = readers_of().get(name, [])
        if len(readers) != 1 or readers[0].op_type not in _FUSED:
            return None
        name = readers[0].output[0]
    return encodings[name]


def _with_scale(e: Encoding, scale: float) -> Encoding:
    """The same integers (same offset) at a wider scale."""
    return dataclasses.replace(
        e, scale=scale, min=scale * (e.qmin + e.offset), max=scale * (e.qmax + e.offset)
    )


def widen_tiny_weight_scales(model: onnx.ModelProto, encodings: EncodingSet, only: str | None = None) -> int:
    """Raise weight scales so every 16-bit requantization multiplier is at least MIN_MULTIPLIER_16 (with
    ``only``, that weight's alone)."""
    changed = 0
    nodes = model.graph.node
    if only is not None:
        nodes = [n for n in nodes if n.op_type in _WEIGHTED and len(n.input) >= 2 and n.input[1] == only]
        if not nodes:
            return 0
    readers_of = functools.cache(lambda: consumers(model))  # (most outputs have their own encoding)
    for node in nodes:
        if node.op_type not in _WEIGHTED or len(node.input) < 2:
            continue
        if node.input[0] not in encodings or node.input[1] not in encodings:
            continue
        x, w = encodings[node.input[0]], encodings[node.input[1]]
        y = _output_encoding(readers_of, node.output[0], encodings)
        if y is None or w.kind != "param" or any(t.dtype != "int" for t in (x, w, y)):
            continue
        if len(x.encodings) != 1 or len(y.encodings) != 1 or max(x.bitwidth, y.bitwidth) < 16:
            continue
        floor = MIN_MULTIPLIER_16 * y.encodings[0].scale / x.encodings[0].scale
        if all(e.scale >= floor for e in w.encodings):
            continue
        encs = [e if e.scale >= floor else _with_scale(e, floor) for e in w.encodings]
        encodings.add(dataclasses.replace(w, encodings=encs))
        changed += 1
    return changed


class HtpBackend(Backend):
    def constrain_encodings(self, model: onnx.ModelProto, encodings: Any) -> Any:
        assert isinstance(encodings, EncodingSet)
        counts = {
            "fixed output": fixed_output(model, encodings, FIXED),
            "shared across data movement": share_input_encoding(model, encodings, SHARED),
            "shared across Concat": share_concat_encoding(model, encodings),
            "per-channel weights made symmetric": symmetric_per_channel_weights(encodings),
            "of weights widened to HTP's smallest 16-bit multiplier": widen_tiny_weight_scales(
                model, encodings
            ),
        }
        for what, n in counts.items():
            if n:
                log.info("HTP constraints: %d encodings %s", n, what)
        return encodings

    def constrain_parameter(self, model: onnx.ModelProto, encodings: Any, name: str) -> None:
        # of constrain_encodings' rules, only these two touch weights
        assert isinstance(encodings, EncodingSet)
        symmetric_per_channel_weights(encodings, only=name)
        widen_tiny_weight_scales(model, encodings, only=name)

    def match_qdq_model(self, model: onnx.ModelProto, encodings: Any) -> None:
        assert isinstance(encodings, EncodingSet)
        weights = hold_weights_as_htp(model, encodings)
        matmuls = eight_bit_second_operands(model, encodings)
        log.debug(
            "HTP arithmetic in the QDQ model: %d weights held as int8, %d MatMuls 16 x 8", weights, matmuls
        )


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
