"""Turning QuantizeLinear/DequantizeLinear pairs (quantization-aware training) into stored encodings.

``convert`` removes the pairs from the graph, so the stored model is the float graph, and records each
pair's scale/zero point as an override the quantizer honours.  A quantized weight (an integer constant
read by a DequantizeLinear) becomes the float constant it stands for.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.model_edit import consumers
from opendlc.schemas import Encoding

log = logging.getLogger("opendlc.convert.qdq")

# Ops whose output is never negative: no Relu is needed to keep a zero-based range's clamp.
_NONNEGATIVE = {"Relu", "Sigmoid", "Softmax", "HardSigmoid", "Softplus", "Exp", "Abs", "Sqrt"}

# zero-point element type -> (bitwidth, signed)
_BITS = {
    onnx.TensorProto.UINT8: (8, False),
    onnx.TensorProto.INT8: (8, True),
    onnx.TensorProto.UINT16: (16, False),
    onnx.TensorProto.INT16: (16, True),
    onnx.TensorProto.UINT4: (4, False),
    onnx.TensorProto.INT4: (4, True),
    onnx.TensorProto.INT32: (32, True),  # biases
}


def constant_values(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node outputs, by tensor name."""
    out = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = a.t
    return out


def _encodings(scale: np.ndarray, zp: np.ndarray | None, zp_type: int) -> list[Encoding]:
    bits, signed = _BITS[zp_type]
    scales = np.atleast_1d(scale).astype(np.float64).ravel()
    zps = (
        np.zeros(scales.shape, dtype=np.int64)
        if zp is None
        else np.broadcast_to(np.atleast_1d(zp).astype(np.int64).ravel(), scales.shape)
    )
    qmin = -(2 ** (bits - 1)) if signed else 0
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    out = []
    for s, z in zip(scales, zps, strict=True):
        offset = -int(z)
        sym = signed and int(z) == 0
        out.append(
            Encoding(
                bits, float(s), offset, (qmin + offset) * float(s), (qmax + offset) * float(s), sym, signed
            )
        )
    return out


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 1
    while out in taken:
        i += 1
        out = f"{name}_{i}"
    taken.add(out)
    return out


def _in_order(nodes: list[onnx.NodeProto], relus: dict[str, onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` with each added Relu right after the node producing its input (graphs stay sorted)."""
    out = []
    for n in nodes:
        out.append(n)
        out.extend(relus[o] for o in n.output if o in relus)
    return out


def extract_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, EncodingSet]:
    """Return (the float model without Q/DQ nodes, the encodings the pairs carried)."""
    model_out = onnx.ModelProto()
    model_out.CopyFrom(model)
    g = model_out.graph
    consts = constant_values(model_out)
    producer = {o: n for n in g.node for o in n.output}
    readers = consumers(model_out)
    graph_inputs = {v.name for v in g.input}
    graph_outputs = {o.name for o in g.output}
    encodings = EncodingSet()
    alias: dict[str, str] = {}  # a removed DequantizeLinear's output -> the float tensor it stands for
    drop: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    relus: dict[str, onnx.NodeProto] = {}  # float tensor -> the Relu that restores its clamp at zero
    taken = set(producer) | graph_inputs | set(consts)

    for dq in [n for n in g.node if n.op_type == "DequantizeLinear"]:
        x, s_name = dq.input[0], dq.input[1]
        z_name = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
        if s_name not in consts or (z_name and z_name not in consts):
            continue  # a dynamic scale is not an encoding we can store
        scale = numpy_helper.to_array(consts[s_name])
        zp_t = consts.get(z_name) if z_name else None
        zp = numpy_helper.to_array(zp_t) if zp_t is not None else None
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        q = producer.get(x)
        if x in consts:  # a quantized weight stored as integers
            zp_type = consts[x].data_type
            if zp_type not in _BITS:
                log.warning("DequantizeLinear %s: %s data is not supported; left in place", dq.name, zp_type)
                continue
            values = numpy_helper.to_array(consts[x]).astype(np.float64)
            shape = [1] * values.ndim
            if scale.size > 1:
                shape[axis] = -1
            zpv = 0 if zp is None else zp.astype(np.float64).reshape(shape)
            real = ((values - zpv) * scale.astype(np.float64).reshape(shape)).astype(np.float32)
            new_inits.append(numpy_helper.from_array(real, dq.output[0]))
            kind, float_name = "param", dq.output[0]
            drop.add(id(dq))
        elif q is not None and q.op_type == "QuantizeLinear":
            zp_type = zp_t.data_type if zp_t is not None else onnx.TensorProto.UINT8
            if zp_type not in _BITS:
                log.warning("QuantizeLinear %s: %s data is not supported; left in place", q.name, zp_type)
                continue
            float_name = q.input[0]
            kind = "param" if float_name in consts else "activation"
            src = producer.get(float_name)
            zp_zero = zp is None or not np.any(zp)
            if kind == "activation" and zp_zero and not _BITS[zp_type][1] and src is not None:
                # An unsigned range starting at zero clamps negatives to zero: quantizers fold a Relu
                # into it (ONNX Runtime does).  Without the pair the float graph needs that Relu back.
                if src.op_type not in _NONNEGATIVE:
                    if float_name not in relus:
                        name = _unique(f"{float_name}_relu", taken)
                        relus[float_name] = onnx.helper.make_node("Relu", [float_name], [name], name=name)
                        producer[name] = relus[float_name]
                    float_name = relus[float_name].output[0]
            drop.add(id(dq))
            # the QuantizeLinear goes too, unless something other than a DequantizeLinear reads it
            if all(c.op_type == "DequantizeLinear" for c in readers.get(q.output[0], [])) and (
                q.output[0] not in graph_outputs
            ):
                drop.add(id(q))
            alias[dq.output[0]] = float_name
        else:
            continue
        per_channel = scale.size > 1
        encodings.add(
            TensorEncoding(
                float_name,
                kind,
                _encodings(scale, zp, zp_type),
                axis if per_channel else None,
                "int",
                None,
                "qdq",
            )
        )

    if not encodings.tensors:
        return model_out, encodings
    kept = _in_order([n for n in g.node if id(n) not in drop], relus)
    identities: list[onnx.NodeProto] = []
    for out_name in [o for o in alias if o in graph_outputs]:
        # A removed pair ended the graph: give its float tensor the output's name where that is safe,
        # else keep the output with an Identity.
        float_name = alias.pop(out_name)
        src = producer.get(float_name)
        renamable = (
            src is not None
            and id(src) not in drop
            and float_name not in graph_inputs | graph_outputs
            and float_name not in consts
        )
        if renamable:
            for i, o in enumerate(src.output):
                if o == float_name:
                    src.output[i] = out_name
            for a, f in alias.items():
                if f == float_name:
                    alias[a] = out_name
            alias[float_name] = out_name
            enc = encodings.tensors.pop(float_name)
            enc.name = out_name
            encodings.add(enc)
        else:
            identities.append(onnx.helper.make_node("Identity", [float_name], [out_name]))
    for n in kept + identities:
        for i, name in enumerate(n.input):
            if name in alias:
                n.input[i] = alias[name]
    del g.node[:]
    g.node.extend(kept + identities)
    g.initializer.extend(new_inits)
    # drop scale/zero-point constants nothing uses any more
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep_inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    keep_nodes = [n for n in g.node if n.op_type != "Constant" or n.output[0] in used]
    del g.node[:]
    g.node.extend(keep_nodes)
    # shapes recorded for tensors that are gone would mislead shape inference
    produced = {o for n in g.node for o in n.output}
    keep_info = [v for v in g.value_info if v.name in produced]
    del g.value_info[:]
    g.value_info.extend(keep_info)
    return model_out, encodings
