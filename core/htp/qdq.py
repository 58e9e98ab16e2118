"""The QDQ model that HTP compiles, and the edits graph preparation makes to it.

* :func:`qdq_model_for` -- a quantized container as a QDQ model (``opendlc.quant.export.to_qdq_model``);
  an ONNX model that already holds QuantizeLinear/DequantizeLinear nodes is taken as it is.
* :func:`expose_outputs` -- extra graph outputs; a quantized tensor is exposed as its dequantized value,
  which is what HTP computes.
* :func:`apply_buffer_types` -- the types of the graph's IO buffers.  A boundary tensor with an encoding
  is ``fixedPoint8``/``fixedPoint16`` by default (the Quantize at an input and the Dequantize at an
  output are taken out of the graph, so HTP reads and writes the integers), or ``float32`` (HTP quantizes
  and dequantizes inside the graph), or the other bitwidth (a conversion is added).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from opendlc.container import Container
from opendlc.errors import NotAvailableError, UsageError
from opendlc.model_edit import consumers, inferred_types
from opendlc.qdq_import import constant_values

BUFFER_TYPES = ("float32", "fixedPoint8", "fixedPoint16")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MS_DOMAIN = "com.microsoft"
_INT_TYPES = {
    (8, False): TensorProto.UINT8,
    (8, True): TensorProto.INT8,
    (16, False): TensorProto.UINT16,
    (16, True): TensorProto.INT16,
}


@dataclass
class Buffer:
    """One input or output buffer of the HTP graph."""

    name: str
    shape: list[int | None]
    dtype: str  # numpy name of what the graph reads/writes
    buffer_type: str  # float32 | fixedPoint8 | fixedPoint16 | the dtype of an unquantized non-float tensor
    scale: float | None = None  # fixed point: real = scale * (q + offset) (QNN convention)
    offset: int | None = None
    bitwidth: int | None = None
    signed: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k in ("name", "shape", "dtype")}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Buffer:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]

    @property
    def fixed_point(self) -> bool:
        return self.buffer_type.startswith("fixedPoint")

    def quantize(self, real: np.ndarray) -> np.ndarray:
        """Float values into this buffer's integers (round half to even, saturating), as HTP's IO does."""
        dtype = np.dtype(self.dtype)
        info = np.iinfo(dtype)
        q = np.rint(np.asarray(real, dtype=np.float64) / self.scale) - self.offset  # type: ignore[operator]
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (self.scale * (q.astype(np.float64) + self.offset)).astype(np.float32)  # type: ignore[operator]


# ---- which model -----------------------------------------------------------------------------------
def has_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def qdq_model_for(container: Container) -> onnx.ModelProto:
    """The QDQ model HTP compiles and the CPU simulation runs; a one-line error when not quantized."""
    if container.encodings is not None:
        try:
            from opendlc.quant.export import to_qdq_model
        except ImportError:
            raise NotAvailableError("QDQ export (opendlc.quant.export) is not available") from None
        return to_qdq_model(container)
    if has_qdq(container.model):
        return container.model
    where = container.path or "the model"
    raise UsageError(
        f"{where}: not quantized -- HTP runs quantized models; quantize it first "
        "(opendlc quantize / snpe-dlc-quantize)"
    )


# ---- small graph helpers ---------------------------------------------------------------------------
def _rename(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a tensor everywhere it is produced or read (graph outputs included)."""
    for n in model.graph.node:
        for i, v in enumerate(n.input):
            if v == old:
                n.input[i] = new
        for i, v in enumerate(n.output):
            if v == old:
                n.output[i] = new
    for o in model.graph.output:
        if o.name == old:
            o.name = new


def _unique(model: onnx.ModelProto, base: str) -> str:
    taken = {v for n in model.graph.node for v in (*n.input, *n.output)}
    taken |= {t.name for t in model.graph.initializer} | {v.name for v in model.graph.input}
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


@dataclass(frozen=True)
class _Enc:
    scale: float
    zero_point: int
    bits: int
    signed: bool

    @property
    def elem_type(self) -> int:
        return _INT_TYPES[(self.bits, self.signed)]

    def with_bits(self, bits: int) -> _Enc:
        """The same real range at another bitwidth (exact when widening)."""
        if bits == self.bits:
            return self
        if self.signed:
            factor = 2.0 ** (bits - self.bits)
        else:
            factor = (2.0**bits - 1) / (2.0**self.bits - 1)
        return _Enc(self.scale / factor, int(round(self.zero_point * factor)), bits, self.signed)


def _encoding_of(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> _Enc | None:
    """The per-tensor encoding of a Q/DQ node with constant scale and zero point, else None."""
    if len(node.input) < 3 or node.input[1] not in consts or node.input[2] not in consts:
        return None
    scale = numpy_helper.to_array(consts[node.input[1]])
    zp_t = consts[node.input[2]]
    if scale.size != 1:
        return None
    key = next((k for k, v in _INT_TYPES.items() if v == zp_t.data_type), None)
    if key is None:
        return None
    zp = numpy_helper.to_array(zp_t)
    return _Enc(float(scale.reshape(())), int(np.asarray(zp).reshape(())), key[0], key[1])


def _qdq_node(
    model: onnx.ModelProto, op: str, src: str, dst: str, enc: _Enc, like: onnx.NodeProto | None
) -> onnx.NodeProto:
    """A Q or DQ node with new constants; 16-bit types use com.microsoft's ops below opset 21."""
    domain = like.domain if like is not None and enc.bits == 8 else ""
    if enc.bits == 16 and _default_opset(model) < 21:
        domain = MS_DOMAIN
    if domain == MS_DOMAIN and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    s_name = _unique(model, f"{dst}__buffer_scale")
    model.graph.initializer.append(numpy_helper.from_array(np.array(enc.scale, dtype=np.float32), s_name))
    z_name = _unique(model, f"{dst}__buffer_zero_point")
    model.graph.initializer.append(helper.make_tensor(z_name, enc.elem_type, [], [enc.zero_point]))
    return helper.make_node(op, [src, s_name, z_name], [dst], domain=domain)


# ---- lowering for the QNN EP -----------------------------------------------------------------------
# op -> index of its bias; the bias is re-encoded at scale (input 0) x (input 1: weight, or norm scale)
_TAKES_BIAS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "LayerNormalization": 2, "InstanceNormalization": 2}


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def lower_for_htp(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The same quantized arithmetic, in the QDQ shapes onnxruntime's QNN EP maps onto quantized HTP ops.

    * ``op -> Relu/Clip -> Quantize`` with no encoding in between (the activation runs fused into the
      op, as QNN does): the activation's output encoding is repeated between op and activation.
      Quantizing before or after a Relu is the same when zero is on the grid; a Clip is only treated
      when its bounds lie on the grid or outside the encoding's range, so nothing changes numerically.
    * biases quantized to 8 or 16 bits: the QNN EP groups Conv/Gemm/LayerNormalization into a quantized
      op only with an int32 bias, so the bias values (as quantized) are re-encoded at scale input x
      weight (x the norm's scale).
    * a data-movement op (Reshape, Transpose, MaxPool, nearest Resize, ...) whose output encoding differs
      from its input's: the QNN EP groups these only with equal encodings, so its input is converted to
      the output's encoding first (a DequantizeLinear -> QuantizeLinear pair, a QNN Convert).  Rounding
      each value then moving it is the same as moving then rounding, so this is exact.

    Returns the model and one line per kind of change.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    notes = []
    n_act = _encode_fused_activations(out)
    if n_act:
        notes.append(f"{n_act} fused Relu/Clip given their op's output encoding")
    n_bias = _int32_biases(out)
    if n_bias:
        notes.append(f"{n_bias} bias(es) re-encoded as int32 at scale input x weight")
    n_move = _requantize_data_movement(out)
    if n_move:
        notes.append(f"{n_move} data-movement op(s) keep their input encoding, then convert")
    return out, notes


# Ops that only move or select values: their output values are input values (for Resize: "nearest").
_MOVES_VALUES = {
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Tile", "MaxPool", "Gather",
    "GatherElements", "Slice", "DepthToSpace", "SpaceToDepth", "Resize",
}  # fmt: skip


def _requantize_data_movement(model: onnx.ModelProto) -> int:
    consts = constant_values(model)
    producers, readers = _producers(model), consumers(model)
    before_op: dict[str, list[onnx.NodeProto]] = {}  # op output -> nodes to put before the op
    for node in model.graph.node:
        if node.op_type not in _MOVES_VALUES or len(node.output) != 1:
            continue
        if node.op_type == "Resize" and any(
            a.name == "mode" and a.s not in (b"nearest",) for a in node.attribute
        ):
            continue  # interpolation makes new values
        dq = producers.get(node.input[0])
        out_readers = readers.get(node.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(out_readers) != 1:
            continue
        q = out_readers[0]
        if q.op_type != "QuantizeLinear":
            continue
        enc_in, enc_out = _encoding_of(dq, consts), _encoding_of(q, consts)
        if enc_in is None or enc_out is None or enc_in == enc_out:
            continue
        # convert the input to the output's encoding first; the op then moves values on that grid
        _requantize_input(model, node, q, before_op)
    return _insert_before(model, before_op)


def _requantize_input(
    model: onnx.ModelProto,
    node: onnx.NodeProto,
    q: onnx.NodeProto,
    pending: dict[str, list[onnx.NodeProto]],
) -> None:
    """Put ``node``'s first input on ``q``'s grid (a Q/DQ pair with q's encoding) before ``node`` runs.

    ``node`` is edited in place; the pair is queued in ``pending`` for :func:`_insert_before`."""
    src = node.input[0]
    q_out, dq_out = _unique(model, f"{src}__htp_q"), _unique(model, f"{src}__htp_dq")
    pending[node.output[0]] = [
        helper.make_node("QuantizeLinear", [src, q.input[1], q.input[2]], [q_out], domain=q.domain),
        helper.make_node("DequantizeLinear", [q_out, q.input[1], q.input[2]], [dq_out], domain=q.domain),
    ]
    node.input[0] = dq_out


def _insert_before(model: onnx.ModelProto, pending: dict[str, list[onnx.NodeProto]]) -> int:
    """Rebuild the node list once, with each queued pair just before its node; return how many."""
    if pending:
        nodes = []
        for n in model.graph.node:
            nodes += pending.get(n.output[0], []) if n.output else []
            nodes.append(n)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return len(pending)


def _clip_bounds(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> tuple[float, float] | None:
    lo, hi = -np.inf, np.inf
    for a in node.attribute:  # opset < 11
        if a.name == "min":
            lo = a.f
        elif a.name == "max":
            hi = a.f
    for i, bound in ((1, "lo"), (2, "hi")):
        if len(node.input) > i and node.input[i]:
            if node.input[i] not in consts:
                return None
            value = float(numpy_helper.to_array(consts[node.input[i]]).reshape(()))
            lo, hi = (value, hi) if bound == "lo" else (lo, value)
    return lo, hi


def _activation_exact(node: onnx.NodeProto, enc: _Enc, consts: dict[str, onnx.TensorProto]) -> bool:
    """Quantizing with ``enc`` before ``node`` gives the same integers as after it."""
    if node.op_type == "Relu":
        return True  # zero is on every grid opendlc and onnxruntime make
    bounds = _clip_bounds(node, consts)
    if bounds is None:
        return False
    info = np.iinfo(helper.tensor_dtype_to_np_dtype(enc.elem_type))
    grid_lo, grid_hi = enc.scale * (info.min - enc.zero_point), enc.scale * (info.max - enc.zero_point)

    def fine(bound: float) -> bool:
        if not np.isfinite(bound) or bound <= grid_lo or bound >= grid_hi:
            return True
        steps = bound / enc.scale
        return abs(steps - round(steps)) < 1e-4

    return fine(bounds[0]) and fine(bounds[1])


def _encode_fused_activations(model: onnx.ModelProto) -> int:
    consts = constant_values(model)
    producers, readers = _producers(model), consumers(model)
    before_act: dict[str, list[onnx.NodeProto]] = {}  # activation output -> the Q/DQ to put before it
    for act in [n for n in model.graph.node if n.op_type in ("Relu", "Clip")]:
        src = act.input[0]
        before = producers.get(src)
        after = readers.get(act.output[0], [])
        if before is None or before.op_type in QDQ_OPS or len(after) != 1 or len(readers.get(src, [])) != 1:
            continue
        q = after[0]
        enc = _encoding_of(q, consts) if q.op_type == "QuantizeLinear" else None
        if enc is None or not _activation_exact(act, enc, consts):
            continue
        _requantize_input(model, act, q, before_act)
    return _insert_before(model, before_act)


def _int32_biases(model: onnx.ModelProto) -> int:
    consts = constant_values(model)
    producers = _producers(model)
    added: list[onnx.NodeProto] = []
    for node in model.graph.node:
        at = _TAKES_BIAS.get(node.op_type)
        if at is None or len(node.input) <= at or not node.input[at]:
            continue
        b_dq, x_dq, w_dq = (producers.get(node.input[i]) for i in (at, 0, 1))
        if any(d is None or d.op_type != "DequantizeLinear" for d in (b_dq, x_dq, w_dq)):
            continue
        assert b_dq is not None and x_dq is not None and w_dq is not None
        if any(i not in consts for i in (*b_dq.input[:3], x_dq.input[1], w_dq.input[1])):
            continue
        b_q = consts[b_dq.input[0]]
        if b_q.data_type == TensorProto.INT32:
            continue
        bias = _dequantized(b_q, consts[b_dq.input[1]], consts[b_dq.input[2]], b_dq)
        s_x = numpy_helper.to_array(consts[x_dq.input[1]]).astype(np.float64)
        s_w = numpy_helper.to_array(consts[w_dq.input[1]]).astype(np.float64).reshape(-1)
        if s_x.size != 1 or s_w.size not in (1, bias.size):
            continue
        scale = (float(s_x.reshape(())) * s_w).astype(np.float32)
        q32 = np.rint(bias / np.broadcast_to(scale.astype(np.float64), bias.shape)).astype(np.int64)
        if np.abs(q32).max(initial=0) >= 2**31:
            continue
        base = _unique(model, f"{node.input[at]}__int32")
        if any(base == d.output[0] for d in added):
            base = f"{base}_{len(added)}"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(q32.astype(np.int32), f"{base}_values"),
                numpy_helper.from_array(scale if scale.size > 1 else scale.reshape(()), f"{base}_scale"),
                numpy_helper.from_array(
                    np.zeros(scale.shape if scale.size > 1 else (), np.int32), f"{base}_zp"
                ),
            ]
        )
        kw = {"axis": 0} if scale.size > 1 else {}
        added.append(
            helper.make_node(
                "DequantizeLinear", [f"{base}_values", f"{base}_scale", f"{base}_zp"], [base], **kw
            )
        )
        node.input[at] = base
    if added:  # the old bias DQ nodes are left for onnxruntime to drop if nothing else reads them
        nodes = list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend([*added, *nodes])
        _drop_unused(model)
    return len(added)


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove DequantizeLinear nodes and initializers nothing reads any more."""
    g = model.graph
    while True:
        read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] not in read]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    read = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(keep)


def _dequantized(
    q: onnx.TensorProto, scale: onnx.TensorProto, zp: onnx.TensorProto, dq: onnx.NodeProto
) -> np.ndarray:
    values = numpy_helper.to_array(q).astype(np.float64).reshape(-1)
    s = numpy_helper.to_array(scale).astype(np.float64).reshape(-1)
    z = numpy_helper.to_array(zp).astype(np.float64).reshape(-1)
    if s.size not in (1, values.size):
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        raise UsageError(f"bias of {dq.output[0]}: per-axis encoding on axis {axis} of a 1-D bias")
    return (values - z) * s


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (``<op type>__<index>``), in place."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name, k = f"{n.op_type}__{i}", 1
            while name in taken:
                name, k = f"{n.op_type}__{i}_{k}", k + 1
            n.name = name
            taken.add(name)


# ---- extra outputs ---------------------------------------------------------------------------------
def expose_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``tensors`` added as graph outputs (quantized ones dequantized)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    wanted = [t for t in dict.fromkeys(tensors) if t not in present]
    if not wanted:
        return out
    types = inferred_types(out)
    sources = {v.name for v in out.graph.input} | {i.name for i in out.graph.initializer}
    for t in wanted:
        q = next((n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == t), None)
        if t in sources:  # an input asked for as an output is simply passed through
            q = None
        dq = None
        if q is not None:
            dq = next(
                (n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]),
                None,
            )
        if dq is not None:
            # t is float before quantization; HTP has only its quantized value: expose the DQ's output
            # under t's name, and keep the float tensor (renamed) for whatever reads it.
            _rename(out, t, _unique(out, f"{t}__prequant"))
            _rename(out, dq.output[0], t)
            out.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
        else:
            vi = onnx.ValueInfoProto()
            vi.name = t
            if t in types:
                vi.type.CopyFrom(types[t])
            else:
                vi.type.tensor_type.elem_type = TensorProto.FLOAT
            out.graph.output.append(vi)
    return out


# ---- IO buffer types -------------------------------------------------------------------------------
def parse_buffer_types(values: list[str]) -> dict[str, str]:
    """``["name=fixedPoint8", ...]`` -> {name: type}; bad forms are one-line usage errors."""
    out: dict[str, str] = {}
    for v in values:
        name, eq, kind = v.rpartition("=")
        if not eq or not name:
            raise UsageError(
                f"--buffer_data_type '{v}': expected NAME=TYPE (TYPE: {', '.join(BUFFER_TYPES)})"
            )
        if kind not in BUFFER_TYPES:
            raise UsageError(
                f"--buffer_data_type '{v}': unknown type '{kind}' (choose {', '.join(BUFFER_TYPES)})"
            )
        out[name] = kind
    return out


def _bits_of(kind: str) -> int:
    return int(kind.removeprefix("fixedPoint"))


def apply_buffer_types(
    model: onnx.ModelProto, requested: dict[str, str], *, use_float_io: bool = False
) -> tuple[onnx.ModelProto, list[Buffer], list[Buffer]]:
    """Edit the graph's boundary so its IO buffers have the requested types; return (model, ins, outs)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name for t in g.initializer}
    in_names = [v.name for v in g.input if v.name not in inits]
    out_names = [v.name for v in g.output]
    unknown = [n for n in requested if n not in in_names and n not in out_names]
    if unknown:
        raise UsageError(
            f"--buffer_data_type names {', '.join(unknown)}, not an input or output of the graph "
            f"(inputs: {', '.join(in_names)}; outputs: {', '.join(out_names)})"
        )
    consts = constant_values(out)
    inputs = [_input_buffer(out, name, requested.get(name), use_float_io, consts) for name in in_names]
    outputs = [_output_buffer(out, name, requested.get(name), use_float_io, consts) for name in out_names]
    return out, inputs, outputs


def _shape_of(v: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]


def _plain_buffer(v: onnx.ValueInfoProto, asked: str | None, what: str) -> Buffer:
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type or TensorProto.FLOAT))
    if asked is not None and asked.startswith("fixedPoint"):
        raise UsageError(
            f"--buffer_data_type {v.name}={asked}: {what} '{v.name}' carries no encoding "
            "at the graph boundary"
        )
    if asked == "float32" and dtype != np.float32:
        raise UsageError(f"--buffer_data_type {v.name}=float32: {what} '{v.name}' is {dtype.name}, not float")
    kind = "float32" if dtype == np.float32 else dtype.name
    return Buffer(v.name, _shape_of(v), dtype.name, kind)


def _fixed(v: onnx.ValueInfoProto, enc: _Enc, kind: str) -> Buffer:
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(enc.elem_type))
    return Buffer(v.name, _shape_of(v), dtype.name, kind, enc.scale, -enc.zero_point, enc.bits, enc.signed)


def _choose(enc: _Enc, asked: str | None, use_float_io: bool) -> str:
    return asked or ("float32" if use_float_io else f"fixedPoint{enc.bits}")


def _input_buffer(
    model: onnx.ModelProto, name: str, asked: str | None, use_float_io: bool, consts: dict
) -> Buffer:
    g = model.graph
    v = next(i for i in g.input if i.name == name)
    readers = [n for n in g.node if name in n.input]
    quants = [n for n in readers if n.op_type == "QuantizeLinear" and n.input[0] == name]
    encs = {_encoding_of(n, consts) for n in quants}
    if not readers or len(quants) != len(readers) or len(encs) != 1 or None in encs:
        return _plain_buffer(v, asked, "input")  # not (uniformly) quantized where it enters
    enc = encs.pop()
    assert enc is not None
    kind = _choose(enc, asked, use_float_io)
    if kind == "float32":
        return Buffer(
            name, _shape_of(v), "float32", "float32", enc.scale, -enc.zero_point, enc.bits, enc.signed
        )
    target = enc.with_bits(_bits_of(kind))
    if target == enc:  # HTP reads the integers the Quantize would have made
        for q in quants:
            g.node.remove(q)
            _rename(model, q.output[0], name)
    else:  # the buffer holds another bitwidth: dequantize it first, the graph's Quantize converts
        f_name = _unique(model, f"{name}__buffer_float")
        for q in quants:
            q.input[0] = f_name
        g.node.insert(0, _qdq_node(model, "DequantizeLinear", name, f_name, target, quants[0]))
    v.type.tensor_type.elem_type = target.elem_type
    return _fixed(v, target, kind)


def _output_buffer(
    model: onnx.ModelProto, name: str, asked: str | None, use_float_io: bool, consts: dict
) -> Buffer:
    g = model.graph
    v = next(o for o in g.output if o.name == name)
    producer = next((n for n in g.node if name in n.output), None)
    enc = (
        _encoding_of(producer, consts)
        if producer is not None and producer.op_type == "DequantizeLinear"
        else None
    )
    source_made = enc is not None and any(producer.input[0] in n.output for n in g.node)  # type: ignore[union-attr]
    if enc is None or not source_made:
        return _plain_buffer(v, asked, "output")
    kind = _choose(enc, asked, use_float_io)
    if kind == "float32":
        return Buffer(
            name, _shape_of(v), "float32", "float32", enc.scale, -enc.zero_point, enc.bits, enc.signed
        )
    target = enc.with_bits(_bits_of(kind))
    assert producer is not None
    internal = _unique(model, f"{name}__dequantized")
    _rename(model, name, internal)  # the float value keeps feeding whatever reads it inside
    v.name = name  # ... but the graph output stays under its name
    if target == enc:  # HTP writes the integers the Dequantize read
        quantized = producer.input[0]
        _rename(model, quantized, name)
        if not any(internal in n.input for n in g.node):
            g.node.remove(producer)
    else:
        g.node.append(_qdq_node(model, "QuantizeLinear", internal, name, target, producer))
    v.type.tensor_type.elem_type = target.elem_type
    return _fixed(v, target, kind)
