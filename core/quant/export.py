"""A quantized container as a QDQ ONNX model: QuantizeLinear/DequantizeLinear around every encoded tensor.

onnxruntime runs it on the CPU as a simulation of the quantized model, and Qualcomm's QNN execution
provider compiles it for HTP.  8-bit encodings use the standard ``ai.onnx`` Q/DQ ops; 4- and 16-bit ones
use onnxruntime's ``com.microsoft`` Q/DQ ops, which take those integer types (as onnxruntime's own QNN
tooling does).  Float fallback at 16 bits is simulated by a round trip through float16.

Where a runtime computes otherwise than onnxruntime's CPU would from the plain QDQ model, its backend
says so: the model is handed to the container's target backend (recorded in the encodings; HTP when not
recorded), whose :meth:`opendlc.targets.Backend.match_qdq_model` rewrites it in place (the HTP backend,
for instance, writes 8-bit weights as HTP holds them and runs a MatMul of two 16-bit activations as 16 x
8 bits).  A backend that is not registered leaves the plain QDQ model.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from opendlc.container import Container
from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.errors import UsageError
from opendlc.plugin_manager import get_plugin_manager

log = logging.getLogger("opendlc.quant.export")

MS_DOMAIN = "com.microsoft"
# An activation's simulated (quantized-dequantized) value is named after it with this suffix, except for a
# graph output, which keeps its name (its producer's output is renamed instead).
DEQUANTIZED_SUFFIX = "__dq"

_INT_TYPES = {
    (4, True): (TensorProto.INT4, np.int8),
    (4, False): (TensorProto.UINT4, np.uint8),
    (8, True): (TensorProto.INT8, np.int8),
    (8, False): (TensorProto.UINT8, np.uint8),
    (16, True): (TensorProto.INT16, np.int16),
    (16, False): (TensorProto.UINT16, np.uint16),
    (32, True): (TensorProto.INT32, np.int32),
}


def storage_types(t: TensorEncoding) -> tuple[int, type]:
    """The ONNX and numpy integer types an integer encoding's values are stored as."""
    e = t.encodings[0]
    signed = e.signed or e.offset > 0
    return _INT_TYPES[(e.bitwidth, signed if e.bitwidth != 32 else True)]


def scales_zero_points(t: TensorEncoding) -> tuple[np.ndarray, np.ndarray]:
    """The scale and zero point inputs of Q/DQ ops for an encoding (scalars when per tensor)."""
    _, np_type = storage_types(t)
    scale = np.array([e.scale for e in t.encodings], dtype=np.float32)
    zp = np.array([-e.offset for e in t.encodings], dtype=np_type)
    if len(t.encodings) == 1:
        return scale.reshape(()), zp.reshape(())
    return scale, zp


def quantize_values(values: np.ndarray, t: TensorEncoding) -> np.ndarray:
    """Integer values of a constant under its encoding (per channel along ``t.axis``)."""
    _, np_type = storage_types(t)
    scale, zp = scales_zero_points(t)
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
    scale, zp = scales_zero_points(t)
    shape = [1] * values.ndim
    if scale.ndim:
        shape[t.axis if t.axis is not None else 0] = -1
    return (q - zp.reshape(shape).astype(np.float64)) * scale.reshape(shape).astype(np.float64)


def quantized_constant(
    q: np.ndarray, t: TensorEncoding, q_name: str, scale_name: str, zero_point_name: str
) -> tuple[TensorProto, TensorProto, TensorProto]:
    """The initializers a constant's DequantizeLinear reads: its integers ``q``, scale and zero point.

    A DequantizeLinear reading them needs ``axis=t.axis`` when ``t`` has more than one encoding.
    """
    onnx_type = storage_types(t)[0]
    if t.encodings[0].bitwidth == 4:  # numpy has no 4-bit type: onnx's helper packs the values
        values = helper.make_tensor(q_name, onnx_type, list(q.shape), q.reshape(-1).tolist())
    else:
        values = numpy_helper.from_array(q, q_name)
    scale, zp = scales_zero_points(t)
    return values, numpy_helper.from_array(scale, scale_name), zero_point_tensor(zp, t, zero_point_name)


def zero_point_tensor(zp: np.ndarray, t: TensorEncoding, name: str) -> TensorProto:
    """The zero-point initializer of encoding ``t`` (``zp`` from :func:`scales_zero_points`)."""
    onnx_type, np_type = storage_types(t)
    if t.encodings[0].bitwidth == 4:  # numpy has no 4-bit type: onnx's helper packs the values
        return helper.make_tensor(name, onnx_type, list(zp.shape), zp.reshape(-1).tolist())
    return numpy_helper.from_array(zp.astype(np_type), name)


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
        scale, zp = scales_zero_points(t)
        tag = dst.replace("/", "_")
        s_name, z_name = f"{tag}__scale", f"{tag}__zero_point"
        new_inits.extend([numpy_helper.from_array(scale, s_name), zero_point_tensor(zp, t, z_name)])
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
            q_name, tag = f"{name}__quantized", name.replace("/", "_")
            new_inits.extend(
                quantized_constant(
                    quantize_values(values, t), t, q_name, f"{tag}__scale", f"{tag}__zero_point"
                )
            )
            kw = {"axis": t.axis} if len(t.encodings) > 1 else {}
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
            rename[name] = name + DEQUANTIZED_SUFFIX
            head.extend(make(name, name + DEQUANTIZED_SUFFIX))
        elif name in outputs:
            producer_out_rename[name] = f"{name}__float"
            new_nodes_after[name] = make(f"{name}__float", name)
        else:
            rename[name] = name + DEQUANTIZED_SUFFIX
            new_nodes_after[name] = make(name, name + DEQUANTIZED_SUFFIX)

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
    _match_target_backend(model, enc)
    return model


def _match_target_backend(model: onnx.ModelProto, encodings: EncodingSet) -> None:
    """Let the container's target backend make the CPU simulation compute what its runtime computes."""
    name = (encodings.meta or {}).get("quantizer", {}).get("target_backend", "HTP")
    backends = get_plugin_manager().backends
    if name not in backends:
        log.debug("target backend %r is not registered: the QDQ model is left as quantized", name)
        return
    backends.get(name).match_qdq_model(model, encodings)
