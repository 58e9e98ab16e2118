"""Turning QuantizeLinear/DequantizeLinear pairs (quantization-aware training) into stored encodings.

``convert`` removes the pairs from the graph, so the stored model is the float graph, and records each
pair's scale/zero point as an override the quantizer honours.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.schemas import Encoding

_BITS = {
    onnx.TensorProto.UINT8: (8, False),
    onnx.TensorProto.INT8: (8, True),
    onnx.TensorProto.UINT16: (16, False),
    onnx.TensorProto.INT16: (16, True),
    onnx.TensorProto.UINT4: (4, False),
    onnx.TensorProto.INT4: (4, True),
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
    bits, signed = _BITS.get(zp_type, (8, False))
    scales = np.atleast_1d(scale).astype(np.float64)
    zps = (
        np.zeros_like(scales, dtype=np.int64)
        if zp is None
        else np.broadcast_to(np.atleast_1d(zp), scales.shape)
    )
    out = []
    for s, z in zip(scales, zps, strict=True):
        qmin = -(2 ** (bits - 1)) if signed else 0
        qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
        offset = -int(z)
        sym = signed and int(z) == 0
        out.append(
            Encoding(
                bits, float(s), offset, (qmin + offset) * float(s), (qmax + offset) * float(s), sym, signed
            )
        )
    return out


def extract_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, EncodingSet]:
    """Return (the float model without Q/DQ nodes, the encodings the pairs carried)."""
    model_out = onnx.ModelProto()
    model_out.CopyFrom(model)
    g = model_out.graph
    consts = constant_values(model_out)
    producer = {o: n for n in g.node for o in n.output}
    encodings = EncodingSet()
    rename: dict[str, str] = {}
    drop: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    graph_outputs = {o.name for o in g.output}
    identities: list[onnx.NodeProto] = []

    for dq in [n for n in g.node if n.op_type == "DequantizeLinear"]:
        x, s_name = dq.input[0], dq.input[1]
        z_name = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
        if s_name not in consts:
            continue  # a dynamic scale is not an encoding we can store
        scale = numpy_helper.to_array(consts[s_name])
        zp_t = consts.get(z_name) if z_name else None
        zp = numpy_helper.to_array(zp_t) if zp_t is not None else None
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        q = producer.get(x)
        if x in consts:  # a quantized weight stored as integers
            zp_type = consts[x].data_type
            values = numpy_helper.to_array(consts[x]).astype(np.float64)
            shape = [1] * values.ndim
            if scale.size > 1:
                shape[axis] = -1
            zpv = 0 if zp is None else zp.reshape(shape)
            real = ((values - zpv) * scale.reshape(shape)).astype(np.float32)
            new_inits.append(numpy_helper.from_array(real, dq.output[0]))
            kind, float_name = "param", dq.output[0]
            drop.add(id(dq))
        elif q is not None and q.op_type == "QuantizeLinear":
            zp_type = zp_t.data_type if zp_t is not None else onnx.TensorProto.UINT8
            float_name = q.input[0]
            kind = "param" if float_name in consts else "activation"
            drop.update({id(dq), id(q)})
            if dq.output[0] in graph_outputs:
                identities.append(onnx.helper.make_node("Identity", [float_name], [dq.output[0]]))
            else:
                rename[dq.output[0]] = float_name
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
    kept = [n for n in g.node if id(n) not in drop]
    for n in kept:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
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
    return model_out, encodings
