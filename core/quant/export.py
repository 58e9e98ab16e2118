"""A quantized container as a QDQ ONNX model: QuantizeLinear/DequantizeLinear around every encoded tensor.

onnxruntime runs it on the CPU as a simulation of the quantized model, and Qualcomm's QNN execution
provider compiles it for HTP.  8-bit encodings use the standard ``ai.onnx`` Q/DQ ops; 4- and 16-bit ones
use onnxruntime's ``com.microsoft`` Q/DQ ops, which take those integer types (as onnxruntime's own QNN
tooling does).  Float fallback at 16 bits is simulated by a round trip through float16.  For an HTP
container (the default target), an 8-bit weight of Conv/Gemm/MatMul is written as HTP holds it
(:func:`as_htp_holds`), and the second input of a MatMul of two 16-bit activations is converted to 8
bits (as the QNN EP does for HTP), so the CPU simulation computes what HTP computes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from opendlc.container import Container
from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.errors import UsageError
from opendlc.schemas import Encoding

MS_DOMAIN = "com.microsoft"

_INT_TYPES = {
    (4, True): (TensorProto.INT4, np.int8),
    (4, False): (TensorProto.UINT4, np.uint8),
    (8, True): (TensorProto.INT8, np.int8),
    (8, False): (TensorProto.UINT8, np.uint8),
    (16, True): (TensorProto.INT16, np.int16),
    (16, False): (TensorProto.UINT16, np.uint16),
    (32, True): (TensorProto.INT32, np.int32),
}


def _storage(t: TensorEncoding) -> tuple[int, type]:
    e = t.encodings[0]
    signed = e.signed or e.offset > 0
    return _INT_TYPES[(e.bitwidth, signed if e.bitwidth != 32 else True)]


def _scales_zps(t: TensorEncoding) -> tuple[np.ndarray, np.ndarray]:
    _, np_type = _storage(t)
    scale = np.array([e.scale for e in t.encodings], dtype=np.float32)
    zp = np.array([-e.offset for e in t.encodings], dtype=np_type)
    if len(t.encodings) == 1:
        return scale.reshape(()), zp.reshape(())
    return scale, zp


def quantize_values(values: np.ndarray, t: TensorEncoding) -> np.ndarray:
    """Integer values of a constant under its encoding (per channel along ``t.axis``)."""
    _, np_type = _storage(t)
    scale, zp = _scales_zps(t)
    shape = [1] * values.ndim
    if scale.ndim:
        shape[t.axis if t.axis is not None else 0] = -1
    s = scale.reshape(shape).astype(np.float64)
    z = zp.reshape(shape).astype(np.float64)
    info = np.iinfo(np_type) if t.encodings[0].bitwidth != 4 else None
    lo, hi = (info.min, info.max) if info else ((-8, 7) if np_type is np.int8 else (0, 15))
    return np.clip(np.round(values.astype(np.float64) / s) + z, lo, hi).astype(np_type)


def dequantized_values(values: np.ndarray, t: TensorEncoding) -> np.ndarray:
    """What a constant becomes after quantize-dequantize under its encoding (float64)."""
    q = quantize_values(values, t).astype(np.float64)
    scale, zp = _scales_zps(t)
    shape = [1] * values.ndim
    if scale.ndim:
        shape[t.axis if t.axis is not None else 0] = -1
    return (q - zp.reshape(shape).astype(np.float64)) * scale.reshape(shape).astype(np.float64)


# Ops whose input 1 is a weight that HTP holds as signed int8 per output channel (op -> channel axis;
# None: the last axis).  Gemm's axis depends on transB (see _weight_axes).
_HTP_WEIGHT_AXIS: dict[str, int | None] = {"Conv": 0, "Gemm": 0, "MatMul": None}


def _weight_axes(graph: onnx.GraphProto) -> dict[str, int | None]:
    """Constant weights read only as input 1 of Conv/Gemm/MatMul, with their output-channel axis."""
    axes: dict[str, int | None] = {}
    other: set[str] = set()
    for n in graph.node:
        for i, name in enumerate(n.input):
            if i != 1 or n.op_type not in _HTP_WEIGHT_AXIS:
                other.add(name)
                continue
            axis = _HTP_WEIGHT_AXIS[n.op_type]
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


def _needs_ms_domain(encodings: EncodingSet, opset: int) -> bool:
    for t in encodings.tensors.values():
        if t.dtype != "int":
            continue
        bw = t.encodings[0].bitwidth
        if bw in (4, 16) or (t.per_channel and opset < 13):
            return True
    return False


def to_qdq_model(container: Container) -> onnx.ModelProto:
    """The QDQ ONNX model of a quantized container."""
    if container.encodings is None:
        raise UsageError(f"{container.path or 'model'}: not quantized (run opendlc quantize first)")
    model = onnx.ModelProto()
    model.CopyFrom(container.model)
    g = model.graph
    enc = container.encodings
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    domain = MS_DOMAIN if _needs_ms_domain(enc, opset) else ""
    if domain and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))

    inits = {t.name: t for t in g.initializer}
    new_inits: list[TensorProto] = []
    new_nodes_after: dict[str, list[onnx.NodeProto]] = {}  # producer output -> nodes to insert after it
    head: list[onnx.NodeProto] = []  # nodes for graph inputs and constants (go first)
    rename: dict[str, str] = {}  # consumers' input renames
    outputs = {o.name for o in g.output}
    producer_out_rename: dict[str, str] = {}

    def qdq_nodes(src: str, dst: str, t: TensorEncoding) -> list[onnx.NodeProto]:
        scale, zp = _scales_zps(t)
        tag = dst.replace("/", "_")
        s_name, z_name = f"{tag}__scale", f"{tag}__zero_point"
        new_inits.append(numpy_helper.from_array(scale, s_name))
        zp_t = numpy_helper.from_array(zp.astype(_storage(t)[1]), z_name)
        zp_t.data_type = _storage(t)[0]
        if t.encodings[0].bitwidth == 4:  # 4-bit zero points are stored packed by onnx helpers
            zp_t = helper.make_tensor(z_name, _storage(t)[0], list(zp.shape), zp.reshape(-1).tolist())
        new_inits.append(zp_t)
        kw = {"axis": t.axis} if scale.ndim else {}
        return [
            helper.make_node("QuantizeLinear", [src, s_name, z_name], [f"{tag}__q"], domain=domain, **kw),
            helper.make_node("DequantizeLinear", [f"{tag}__q", s_name, z_name], [dst], domain=domain, **kw),
        ]

    def fp16_nodes(src: str, dst: str) -> list[onnx.NodeProto]:
        tag = dst.replace("/", "_")
        return [
            helper.make_node("Cast", [src], [f"{tag}__fp16"], to=TensorProto.FLOAT16),
            helper.make_node("Cast", [f"{tag}__fp16"], [dst], to=TensorProto.FLOAT),
        ]

    graph_inputs = {i.name for i in g.input}
    # HTP's ways are simulated for HTP containers (and ones whose target is not recorded)
    for_htp = (enc.meta or {}).get("quantizer", {}).get("target_backend", "HTP") == "HTP"
    # per-axis DequantizeLinear needs opset 13
    weight_axes = _weight_axes(g) if opset >= 13 and for_htp else {}
    for name, t in enc.tensors.items():
        if t.dtype == "float" and (t.float_bitwidth or 32) == 32:
            continue
        if t.kind == "param" and name in inits:
            values = numpy_helper.to_array(inits[name]).astype(np.float32)
            if t.dtype == "float":  # float16 parameter
                inits[name].CopyFrom(
                    numpy_helper.from_array(values.astype(np.float16).astype(np.float32), name)
                )
                continue
            qvals = quantize_values(values, t)
            if name in weight_axes:  # the CPU simulation computes with the weight HTP computes with
                qvals, t = as_htp_holds(qvals, t, weight_axes[name]) or (qvals, t)
            q_name = f"{name}__quantized"
            if t.encodings[0].bitwidth == 4:
                qt = helper.make_tensor(q_name, _storage(t)[0], list(qvals.shape), qvals.reshape(-1).tolist())
            else:
                qt = numpy_helper.from_array(qvals, q_name)
            new_inits.append(qt)
            scale, zp = _scales_zps(t)
            tag = name.replace("/", "_")
            new_inits.append(numpy_helper.from_array(scale, f"{tag}__scale"))
            zp_t = helper.make_tensor(
                f"{tag}__zero_point", _storage(t)[0], list(zp.shape), zp.reshape(-1).tolist()
            )
            new_inits.append(zp_t)
            kw = {"axis": t.axis} if scale.ndim else {}
            head.append(
                helper.make_node(
                    "DequantizeLinear",
                    [q_name, f"{tag}__scale", f"{tag}__zero_point"],
                    [name],
                    domain=domain,
                    **kw,
                )
            )
            g.initializer.remove(inits[name])
            continue
        if t.kind != "activation":
            continue
        make = (lambda s, d, t=t: qdq_nodes(s, d, t)) if t.dtype == "int" else fp16_nodes
        if name in graph_inputs:
            rename[name] = f"{name}__dq"
            head.extend(make(name, f"{name}__dq"))
        elif name in outputs:
            producer_out_rename[name] = f"{name}__float"
            new_nodes_after[name] = make(f"{name}__float", name)
        else:
            rename[name] = f"{name}__dq"
            new_nodes_after[name] = make(name, f"{name}__dq")

    nodes: list[onnx.NodeProto] = list(head)
    for node in g.node:
        for i, inp in enumerate(node.input):
            if inp in rename:
                node.input[i] = rename[inp]
        originals = list(node.output)
        for i, out in enumerate(node.output):
            if out in producer_out_rename:
                node.output[i] = producer_out_rename[out]
        nodes.append(node)
        for out in originals:
            nodes.extend(new_nodes_after.get(out, []))
    # Q/DQ nodes inserted after a producer must not read renamed inputs of their own
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    if for_htp:
        _eight_bit_second_operands(model, enc)
    return model


def _eight_bit_second_operands(model: onnx.ModelProto, enc: EncodingSet) -> int:
    """Quantize the second input of a MatMul of two 16-bit activations to 8 bits over the same range.

    HTP multiplies two activations as 16 x 8 bits: the QNN EP converts the second one (measured on the
    emulator: PP-OCR rec W8A16's attention MatMuls are then within about one 16-bit step of the CPU on
    average, instead of 40-80).  The CPU simulation quantizes it the same way, so both compute the same.
    Where that tensor feeds only this MatMul its own Q/DQ pair becomes 8-bit (HTP's lowering then
    converts before a data-movement op that produced it); otherwise an 8-bit pair is added.
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
        t = enc.tensors.get(name.removesuffix("__dq"))
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
