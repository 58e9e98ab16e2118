"""Where HTP computes otherwise than onnxruntime's CPU, as rewrites of a container's QDQ model.

The QDQ model (:func:`opendlc.quant.export.to_qdq_model`) is the CPU simulation of the quantized model;
the HTP backend rewrites it with these so that the simulation computes what HTP computes:
- :func:`hold_weights_as_htp`: an 8-bit weight of Conv/Gemm/MatMul is held as HTP holds it (signed int8
  per output channel, see :func:`as_htp_holds`);
- :func:`eight_bit_second_operands`: the second input of a MatMul of two 16-bit activations is quantized
  to 8 bits (HTP multiplies two activations as 16 x 8 bits).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.quant.export import DEQUANTIZED_SUFFIX, quantized_constant
from opendlc.schemas import Encoding

# Ops whose input 1 is a weight that HTP holds as signed int8 per output channel (op -> channel axis;
# None: the last axis).  Gemm's axis depends on transB (see weight_axes).
WEIGHT_AXIS: dict[str, int | None] = {"Conv": 0, "Gemm": 0, "MatMul": None}


def weight_axes(graph: onnx.GraphProto) -> dict[str, int | None]:
    """Tensors read only as input 1 of Conv/Gemm/MatMul, with their output-channel axis."""
    axes: dict[str, int | None] = {}
    other: set[str] = set()
    for n in graph.node:
        for i, name in enumerate(n.input):
            if i != 1 or n.op_type not in WEIGHT_AXIS:
                other.add(name)
                continue
            axis = WEIGHT_AXIS[n.op_type]
            if n.op_type == "Gemm":
                axis = 0 if any(a.name == "transB" and a.i for a in n.attribute) else 1
            if name in axes and axes[name] != axis:
                other.add(name)
            axes[name] = axis
    return {k: v for k, v in axes.items() if k not in other}


def as_htp_holds(
    q: np.ndarray, t: TensorEncoding, axis: int | None
) -> tuple[np.ndarray, TensorEncoding] | None:
    """An 8-bit weight as HTP holds it: signed int8 per output channel, or None if that changes nothing.

    HTP computes with ``q - zero_point`` as int8.  Where an asymmetric per-tensor weight lies more than
    127 steps from its zero point (a skewed weight range: zero point 20 leaves 235 steps above it), HTP
    requantizes that output channel to a symmetric scale of ``max|q - zero_point| / 127`` and leaves the
    other channels as they are (measured on the HTP emulator: one Conv of PP-OCR rec was 13 output steps
    off on such a channel, and agrees within one step once the CPU simulation holds the weight this way).
    """
    if t.dtype != "int" or len(t.encodings) != 1 or t.encodings[0].bitwidth != 8 or q.ndim < 2:
        return None
    e = t.encodings[0]
    d = q.astype(np.int64) + e.offset  # q - zero point
    if d.min(initial=0) >= -128 and d.max(initial=0) <= 127:
        return None  # int8 as it is: HTP computes exactly this
    axis = (q.ndim - 1) if axis is None else axis % q.ndim
    others = tuple(i for i in range(q.ndim) if i != axis)
    widest = np.abs(d).max(axis=others, keepdims=True)
    wide = widest > 127
    values = np.where(wide, np.rint(d * 127 / np.maximum(widest, 1)), d).astype(np.int8)
    scales = e.scale * np.where(wide, widest / 127, 1.0).reshape(-1)
    encs = [Encoding(8, float(s), 0, -128 * float(s), 127 * float(s), True, True) for s in scales]
    return values, TensorEncoding(t.name, "param", encs, axis=axis, source=t.source)


def hold_weights_as_htp(model: onnx.ModelProto, encodings: EncodingSet) -> int:
    """Rewrite each 8-bit weight of Conv/Gemm/MatMul as HTP holds it; return how many were rewritten.

    The weight is the output of a DequantizeLinear of constants; its integers, scale and zero point are
    replaced in place (and the DequantizeLinear gets an axis once the weight is per channel).
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:  # per-axis DequantizeLinear needs opset 13
        return 0
    g = model.graph
    axes = weight_axes(g)
    inits = {i.name: i for i in g.initializer}
    changed = 0
    for node in g.node:
        if node.op_type != "DequantizeLinear" or node.output[0] not in axes or len(node.input) != 3:
            continue
        t = encodings.tensors.get(node.output[0])
        if t is None or t.kind != "param" or t.dtype != "int" or t.encodings[0].bitwidth != 8:
            continue
        if any(name not in inits for name in node.input):
            continue
        held = as_htp_holds(numpy_helper.to_array(inits[node.input[0]]), t, axes[node.output[0]])
        if held is None:
            continue
        values, held_encoding = held
        for tensor in quantized_constant(values, held_encoding, *node.input):
            inits[tensor.name].CopyFrom(tensor)
        kept = [a for a in node.attribute if a.name != "axis"]
        del node.attribute[:]
        node.attribute.extend(kept)
        if len(held_encoding.encodings) > 1:
            node.attribute.append(helper.make_attribute("axis", held_encoding.axis))
        changed += 1
    return changed


def eight_bit_second_operands(model: onnx.ModelProto, enc: EncodingSet) -> int:
    """Quantize the second input of a MatMul of two 16-bit activations to 8 bits over the same range.

    HTP multiplies two activations as 16 x 8 bits: the QNN EP converts the second one (measured on the
    emulator: PP-OCR rec W8A16's attention MatMuls are then within about one 16-bit step of the CPU on
    average, instead of 40-80).  The CPU simulation quantizes it the same way, so both compute the same.
    Where that tensor feeds only this MatMul its own Q/DQ pair becomes 8-bit (HTP's lowering then
    converts before a data-movement op that produced it); otherwise an 8-bit pair is added.  Returns how
    many MatMuls were rewritten.
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    outputs = {o.name for o in g.output}
    pending: dict[int, list[onnx.NodeProto]] = {}
    changed = 0

    def encoding(name: str) -> TensorEncoding | None:
        t = enc.tensors.get(name.removesuffix(DEQUANTIZED_SUFFIX))
        return t if t is not None and t.kind == "activation" and t.dtype == "int" else None

    for index, node in enumerate(g.node):
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        a, b = encoding(node.input[0]), encoding(node.input[1])
        if a is None or b is None or len(a.encodings) != 1 or len(b.encodings) != 1:
            continue
        e = b.encodings[0]
        if a.encodings[0].bitwidth != 16 or e.bitwidth != 16 or e.signed or e.offset > 0:
            continue
        tag = f"{node.input[1]}__as_8bit_{index}".replace("/", "_")
        scale = np.array(e.scale * 257.0, np.float32)  # the same range: (2^16 - 1) / (2^8 - 1) = 257
        zero_point = np.array(min(max(round(-e.offset / 257.0), 0), 255), np.uint8)
        g.initializer.extend(
            [numpy_helper.from_array(scale, f"{tag}_scale"), numpy_helper.from_array(zero_point, f"{tag}_zp")]
        )
        q_args = [f"{tag}_scale", f"{tag}_zp"]
        dq = producer.get(node.input[1])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        alone = readers.get(node.input[1]) == 1 and node.input[1] not in outputs
        if q is not None and q.op_type == "QuantizeLinear" and readers.get(q.output[0]) == 1 and alone:
            for pair in (q, dq):
                pair.input[1], pair.input[2] = q_args
                pair.domain = ""
        else:
            src = node.input[1]
            pending[index] = [
                helper.make_node("QuantizeLinear", [src, *q_args], [f"{tag}_q"]),
                helper.make_node("DequantizeLinear", [f"{tag}_q", *q_args], [tag]),
            ]
            node.input[1] = tag
        changed += 1
    if pending:
        nodes = [m for i, n in enumerate(g.node) for m in (*pending.get(i, []), n)]
        del g.node[:]
        g.node.extend(nodes)
    return changed
