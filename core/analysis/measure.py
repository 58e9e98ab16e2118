"""Measuring quantization error: model outputs against FP32, and every activation against FP32.

Per-layer errors are computed inside one onnxruntime graph that holds the float model and the QDQ model
side by side: per activation it outputs only sums of squares, so nothing but a few scalars per tensor
leaves onnxruntime (fetching every activation of a 480x480 detector costs ten times its forward pass).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from opendlc.encodings import TensorEncoding
from opendlc.errors import OpendlcError, UsageError
from opendlc.progress import track
from opendlc.quant.calibrate import cpu_session

Sample = Mapping[str, np.ndarray]
_Q = "__analysis_q/"  # prefix of the QDQ model's names inside the side-by-side graph
_T = "__analysis_t/"  # prefix of the comparison nodes


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise): inf without noise, -inf without signal."""
    if noise <= 0:
        return math.inf
    if signal <= 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _feeds(sess, sample: Sample, index: int) -> dict[str, np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    missing = [n for n in names if n not in sample]
    if missing:
        raise UsageError(f"sample {index} lacks input(s) {', '.join(missing)}")
    return {n: sample[n] for n in names}


def _run(sess, outputs: list[str] | None, feeds: dict[str, np.ndarray], index: int) -> list:
    try:
        return sess.run(outputs, feeds)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OpendlcError(f"sample {index}: onnxruntime failed: {first}") from None


class OutputReference:
    """The float model's outputs on a few samples, to measure other models' outputs against."""

    def __init__(self, model: onnx.ModelProto, samples: Sequence[Sample], udo: Sequence[str] = ()) -> None:
        self.samples, self.udo = list(samples), list(udo)
        self.names = [o.name for o in model.graph.output]
        sess = cpu_session(model, udo_packages=self.udo)
        self.outputs = [
            [np.asarray(v, dtype=np.float64) for v in _run(sess, self.names, _feeds(sess, s, i), i)]
            for i, s in enumerate(self.samples)
        ]

    def sqnr(self, model: onnx.ModelProto) -> dict[str, float]:
        """SQNR in dB of each output of ``model`` against FP32, over all the samples."""
        sess = cpu_session(model, udo_packages=self.udo)
        signal = dict.fromkeys(self.names, 0.0)
        noise = dict.fromkeys(self.names, 0.0)
        for i, (s, ref) in enumerate(zip(self.samples, self.outputs, strict=True)):
            got = _run(sess, self.names, _feeds(sess, s, i), i)
            for name, r, g in zip(self.names, ref, got, strict=True):
                if not np.all(np.isfinite(g)):
                    noise[name] = math.inf
                    continue
                err = r - np.asarray(g, dtype=np.float64)
                signal[name] += float(np.sum(r * r))
                noise[name] += float(np.sum(err * err))
        return {n: sqnr_db(signal[n], noise[n]) for n in self.names}

    def worst_sqnr(self, model: onnx.ModelProto) -> float:
        """The lowest output SQNR: the number the analysis optimises."""
        return min(self.sqnr(model).values())


@dataclass
class LayerError:
    """An activation of the QDQ simulation against the same activation of the float model."""

    sqnr_db: float  # of the quantized-simulated activation (errors of everything before it included)
    encoding_sqnr_db: float  # of the FP32 activation under its own encoding alone (rounding and clipping)


def _rename_graph(g: onnx.GraphProto, rename) -> None:
    for n in g.node:
        n.input[:] = [rename(i) for i in n.input]
        n.output[:] = [rename(o) for o in n.output]
        n.name = _Q + n.name if n.name else n.name
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _rename_graph(a.g, rename)
            for sub in a.graphs:
                _rename_graph(sub, rename)
    for t in g.initializer:
        t.name = rename(t.name)
    for coll in (g.input, g.output, g.value_info):
        for v in coll:
            v.name = rename(v.name)


def side_by_side(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto) -> onnx.ModelProto:
    """One graph running both models on the same inputs; the QDQ model's names get a prefix."""
    out = onnx.ModelProto()
    out.CopyFrom(float_model)
    q = onnx.GraphProto()
    q.CopyFrom(qdq_model.graph)
    shared = {i.name for i in q.input}
    _rename_graph(q, lambda n: n if not n or n in shared else _Q + n)
    out.graph.node.extend(q.node)
    out.graph.initializer.extend(q.initializer)
    have = {(o.domain, o.version) for o in out.opset_import}
    domains = {o.domain for o in out.opset_import}
    for o in qdq_model.opset_import:
        if (o.domain, o.version) not in have and o.domain not in domains:
            out.opset_import.append(o)
    del out.graph.output[:]
    return out


def qdq_name(qdq_model: onnx.ModelProto, tensor: str) -> str:
    """The name of ``tensor``'s quantized-simulated value in the QDQ model (after its Q/DQ pair)."""
    produced = {o for n in qdq_model.graph.node for o in n.output}
    return f"{tensor}__dq" if f"{tensor}__dq" in produced else tensor


def _own_qdq(g: onnx.GraphProto, src: str, t: TensorEncoding, p: str) -> str | None:
    """Nodes simulating ``t``'s encoding on the float tensor ``src`` in float arithmetic."""
    if t.dtype == "float":
        if (t.float_bitwidth or 32) == 32:
            return None
        g.node.extend(
            [
                helper.make_node("Cast", [src], [f"{p}h"], to=onnx.TensorProto.FLOAT16),
                helper.make_node("Cast", [f"{p}h"], [f"{p}own"], to=onnx.TensorProto.FLOAT),
            ]
        )
        return f"{p}own"
    if len(t.encodings) != 1:
        return None  # per-channel activations: not simulated here
    e = t.encodings[0]
    consts = {"s": e.scale, "o": float(e.offset), "lo": float(e.qmin), "hi": float(e.qmax)}
    g.initializer.extend(
        numpy_helper.from_array(np.array(v, dtype=np.float32), f"{p}{k}") for k, v in consts.items()
    )
    g.node.extend(
        [
            helper.make_node("Div", [src, f"{p}s"], [f"{p}d"]),
            helper.make_node("Round", [f"{p}d"], [f"{p}r"]),
            helper.make_node("Sub", [f"{p}r", f"{p}o"], [f"{p}z"]),
            helper.make_node("Clip", [f"{p}z", f"{p}lo", f"{p}hi"], [f"{p}c"]),
            helper.make_node("Add", [f"{p}c", f"{p}o"], [f"{p}a"]),
            helper.make_node("Mul", [f"{p}a", f"{p}s"], [f"{p}own"]),
        ]
    )
    return f"{p}own"


def layer_errors(
    float_model: onnx.ModelProto,
    qdq_model: onnx.ModelProto,
    encodings: Mapping[str, TensorEncoding],
    samples: Iterable[Sample],
    *,
    total: int | None = None,
    udo: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, LayerError]:
    """SQNR of every encoded activation in ``encodings`` (a name -> encoding mapping), over ``samples``."""
    model = side_by_side(float_model, qdq_model)
    g = model.graph
    outputs: dict[str, tuple[str, str, str | None]] = {}
    for i, (name, t) in enumerate(encodings.items()):
        p = f"{_T}{i}_"
        q = _Q + qdq_name(qdq_model, name)
        if name in {x.name for x in qdq_model.graph.input} and qdq_name(qdq_model, name) == name:
            q = name
        g.node.extend(
            [
                helper.make_node("ReduceSumSquare", [name], [f"{p}sig"], keepdims=0),
                helper.make_node("Sub", [q, name], [f"{p}e"]),
                helper.make_node("ReduceSumSquare", [f"{p}e"], [f"{p}err"], keepdims=0),
            ]
        )
        own = _own_qdq(g, name, t, p)
        own_err = None
        if own is not None:
            own_err = f"{p}ownerr"
            g.node.extend(
                [
                    helper.make_node("Sub", [own, name], [f"{p}oe"]),
                    helper.make_node("ReduceSumSquare", [f"{p}oe"], [own_err], keepdims=0),
                ]
            )
        outputs[name] = (f"{p}sig", f"{p}err", own_err)
    fetch = [o for triple in outputs.values() for o in triple if o]
    g.output.extend(onnx.ValueInfoProto(name=o) for o in fetch)
    sess = cpu_session(model, udo_packages=udo)
    sums = {o: 0.0 for o in fetch}
    for index, sample in enumerate(track(samples, "per-layer SQNR", total=total, enabled=progress)):
        for o, v in zip(fetch, _run(sess, fetch, _feeds(sess, sample, index), index), strict=True):
            sums[o] += float(v)
    out = {}
    for name, (sig, err, own_err) in outputs.items():
        own = sqnr_db(sums[sig], sums[own_err]) if own_err else math.inf
        out[name] = LayerError(sqnr_db(sums[sig], sums[err]), own)
    return out
