"""Empirical bias correction: remove the mean error quantization adds to each layer's output.

Quantizing weights and inputs shifts the expected output of a Conv/Gemm per channel (Nagel et al.,
2019, section 4.2).  On a few calibration samples we measure, per output channel, the mean of
(quantized-simulated output - float output) and subtract it from the layer's bias.  All layers are
corrected at once and the measurement repeated, so later layers see the corrected earlier ones; a few
rounds come close to correcting layer by layer, at two forward passes per sample and round.
Means are computed inside the graph (ReduceMean), so nothing large leaves onnxruntime.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from opendlc.container import Container
from opendlc.encodings import EncodingSet
from opendlc.quant.calibrate import cpu_session
from opendlc.quant.export import to_qdq_model

log = logging.getLogger("opendlc.quant.bias_correction")

CORRECTED_OPS = ("Conv", "ConvTranspose", "Gemm")


@dataclass(frozen=True)
class Target:
    output: str
    bias: str
    axes: tuple[int, ...]  # reduced to leave the channel axis


def targets(model: onnx.ModelProto, encodings: EncodingSet) -> list[Target]:
    """Layers whose bias can absorb their mean error: quantized weights, a constant bias, float output."""
    inits = {t.name: t for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    ranks = {}
    for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    found = []
    for n in model.graph.node:
        if n.op_type not in CORRECTED_OPS or len(n.input) < 3 or n.input[2] not in inits:
            continue
        w = encodings.tensors.get(n.input[1])
        if w is None or w.dtype != "int" or n.output[0] in outputs:
            continue
        if n.op_type == "Gemm":
            axes: tuple[int, ...] = (0,)
        else:
            rank = ranks.get(n.output[0], len(inits[n.input[1]].dims))
            axes = (0, *range(2, rank))
        found.append(Target(n.output[0], n.input[2], axes))
    return found


def _means_model(model: onnx.ModelProto, found: Sequence[Target]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 13)
    for i, t in enumerate(found):
        name = f"__opendlc_bc_mean_{i}"
        if opset >= 18:
            axes = f"{name}_axes"
            out.graph.initializer.append(numpy_helper.from_array(np.array(t.axes, dtype=np.int64), axes))
            node = helper.make_node("ReduceMean", [t.output, axes], [name], keepdims=0)
        else:
            node = helper.make_node("ReduceMean", [t.output], [name], axes=list(t.axes), keepdims=0)
        out.graph.node.append(node)
        out.graph.output.append(onnx.ValueInfoProto(name=name))
    return out


def _channel_means(
    model: onnx.ModelProto, found: Sequence[Target], samples: Sequence[Mapping[str, np.ndarray]]
) -> list[np.ndarray]:
    sess = cpu_session(_means_model(model, found))
    names = [f"__opendlc_bc_mean_{i}" for i in range(len(found))]
    inputs = [i.name for i in sess.get_inputs()]
    total = [np.zeros(0)] * len(found)
    for k, s in enumerate(samples):
        values = sess.run(names, {n: s[n] for n in inputs})
        total = values if k == 0 else [a + b for a, b in zip(total, values, strict=True)]
    return [np.asarray(t, dtype=np.float64) / len(samples) for t in total]


def correct_biases(
    model: onnx.ModelProto,
    encodings: EncodingSet,
    samples: Sequence[Mapping[str, np.ndarray]],
    *,
    rounds: int = 3,
) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose biases absorb the mean quantization error (see the module's docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    found = targets(out, encodings)
    if not found or not samples:
        return out, ["bias correction: nothing to correct" if samples else "bias correction: no samples"]
    inits = {t.name: t for t in out.graph.initializer}
    float_means = _channel_means(out, found, samples)  # the float outputs do not change with the biases
    report = []
    for r in range(rounds):
        sim = to_qdq_model(Container(model=out, encodings=encodings))
        sim_means = _channel_means(sim, found, samples)
        worst = 0.0
        for t, f, s in zip(found, float_means, sim_means, strict=True):
            bias = numpy_helper.to_array(inits[t.bias]).astype(np.float64)
            shift = s - f
            if shift.shape != bias.shape:
                continue  # an output layout we do not reduce to channels
            worst = max(worst, float(np.max(np.abs(shift))))
            inits[t.bias].CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), t.bias))
        report.append(f"bias correction round {r + 1}: {len(found)} layers, largest mean shift {worst:.3g}")
        log.info(report[-1])
    return out, report
