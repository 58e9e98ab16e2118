"""Bias correction: remove the mean output shift that weight quantization causes in each layer.

Quantizing a layer's weights from W to W_q shifts its expected output by E[(W_q - W) x] per output
channel (Nagel et al., 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction",
section 4.2).  With the per-channel means of the layer's input measured on calibration samples, that
shift is a small matrix-vector product, and subtracting it from the bias removes it.  Each layer is
corrected for its own error only, so the correction is stable (no iteration, no accumulated errors fed
back); border effects of padding are ignored.  Input means are computed inside the float graph
(ReduceMean), one forward pass per retained sample.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.quant.calibrate import cpu_session
from opendlc.quant.export import dequantized_values

log = logging.getLogger("opendlc.quant.bias_correction")


@dataclass(frozen=True)
class Target:
    node: onnx.NodeProto
    input: str
    weight: str
    bias: str


def targets(model: onnx.ModelProto, encodings: EncodingSet) -> list[Target]:
    """Conv and Gemm layers with int-encoded weights and a constant bias."""
    inits = {t.name for t in model.graph.initializer}
    found = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or n.input[2] not in inits:
            continue
        w = encodings.tensors.get(n.input[1])
        if w is None or w.dtype != "int" or n.input[1] not in inits:
            continue
        if n.op_type == "Gemm" and any(a.name == "transA" and a.i for a in n.attribute):
            continue
        found.append(Target(n, n.input[0], n.input[1], n.input[2]))
    return found


def input_channel_means(
    model: onnx.ModelProto, names: Sequence[str], samples: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Mean over samples and all axes but 1 (channels / features) of each named tensor."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 13)
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*m.graph.value_info, *m.graph.input]
        if v.type.tensor_type.HasField("shape")
    }
    outs = []
    for i, t in enumerate(names):
        axes = [0, *range(2, ranks.get(t, 4))]
        name = f"__opendlc_bc_mean_{i}"
        if opset >= 18:
            m.graph.initializer.append(
                numpy_helper.from_array(np.array(axes, dtype=np.int64), f"{name}_axes")
            )
            m.graph.node.append(helper.make_node("ReduceMean", [t, f"{name}_axes"], [name], keepdims=0))
        else:
            m.graph.node.append(helper.make_node("ReduceMean", [t], [name], axes=axes, keepdims=0))
        m.graph.output.append(onnx.ValueInfoProto(name=name))
        outs.append(name)
    sess = cpu_session(m)
    feeds = [i.name for i in sess.get_inputs()]
    total: list[np.ndarray] | None = None
    for s in samples:
        values = [np.asarray(v, dtype=np.float64) for v in sess.run(outs, {n: s[n] for n in feeds})]
        total = values if total is None else [a + b for a, b in zip(total, values, strict=True)]
    assert total is not None
    return {t: v / len(samples) for t, v in zip(names, total, strict=True)}


def _shift(target: Target, d_w: np.ndarray, mean_x: np.ndarray) -> np.ndarray | None:
    """E[(W_q - W) x] per output channel, or None for a layout we do not handle."""
    n = target.node
    if n.op_type == "Gemm":
        trans_b = any(a.name == "transB" and a.i for a in n.attribute)
        d = d_w.T if trans_b else d_w  # [K, N]
        return d.T @ mean_x if d.shape[0] == mean_x.size else None
    group = next((a.i for a in n.attribute if a.name == "group"), 1)
    m_out, c_per_group = d_w.shape[0], d_w.shape[1]
    if c_per_group * group != mean_x.size or m_out % group:
        return None
    summed = d_w.reshape(m_out, c_per_group, -1).sum(axis=2)  # [M, C/g]
    x = mean_x.reshape(group, c_per_group)  # input channels of each group
    groups_of_out = np.arange(m_out) // (m_out // group)
    return np.einsum("mc,mc->m", summed, x[groups_of_out])


def correct_biases(
    model: onnx.ModelProto, encodings: EncodingSet, samples: Sequence[Mapping[str, np.ndarray]]
) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose biases absorb each layer's weight-quantization shift."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    found = targets(out, encodings)
    if not found or not samples:
        return out, ["bias correction: nothing to correct" if samples else "bias correction: no samples"]
    inits = {t.name: t for t in out.graph.initializer}
    means = input_channel_means(out, sorted({t.input for t in found}), samples)
    corrected, largest = 0, 0.0
    for t in found:
        w = numpy_helper.to_array(inits[t.weight]).astype(np.float64)
        enc: TensorEncoding = encodings[t.weight]
        shift = _shift(t, dequantized_values(w, enc) - w, means[t.input])
        bias = numpy_helper.to_array(inits[t.bias]).astype(np.float64)
        if shift is None or shift.shape != bias.shape:
            continue
        inits[t.bias].CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), t.bias))
        corrected += 1
        largest = max(largest, float(np.max(np.abs(shift))))
    line = f"bias correction: {corrected} of {len(found)} layers corrected, largest shift {largest:.3g}"
    log.info(line)
    return out, [line]
