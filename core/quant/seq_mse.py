"""Sequential MSE: choose each weight's encoding range by the error of the layer's output.

Min-max weight ranges cover the largest weight of every channel; a narrower range rounds the other
weights more finely at the cost of clipping the largest ones.  Which is better depends on the data the
layer sees, so for every Conv/ConvTranspose/Gemm/MatMul weight this module tries candidate ranges
(fractions of each channel's min-max range, plus the encoding it already has) and keeps, per channel, the
one with the smallest output error ``||W x - Q(W) x||^2`` over the layer's inputs on calibration samples
(the approach AIMET and onnxruntime-genai call sequential MSE).

The error is a quadratic form: with ``H = sum x x^T`` over every input patch the layer multiplies (the
im2col rows of a convolution), channel ``m``'s error is ``d_m^T H d_m`` with ``d_m = Q(w_m) - w_m``.  So
each layer needs only its ``H`` (one per convolution group, K x K, K = inputs per output), built once,
and every candidate costs one matrix product; memory stays bounded by one layer's patches (capped at
``max_positions`` per sample, drawn at random and fixed by a seed).

*Sequential*: the inputs ``x`` come from the model quantized so far -- every layer upstream already
has its chosen weight encoding and every activation its encoding (the CPU QDQ simulation), so a layer's
range is chosen for the inputs it will really see.  Layers are processed by depth (layers whose inputs
do not depend on each other together), and the graph is evaluated incrementally: each node runs once,
only the tensors that later nodes still need are kept (per retained sample).  ``inputs="float"`` takes
the inputs from the float model instead.

Candidate ranges go through the selected parameter schema (QNN conventions: zero exact, the same
symmetric/asymmetric form and steps as the other weights) and then the backend's constraints, applied
among the final activation encodings (HTP: symmetric per-channel weights, and weight scales kept above
the floor its 16-bit requantization multiplier input x weight / output scale needs), so the chosen
encoding is one the pipeline could have produced.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper, numpy_helper

from opendlc.container import Container
from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.plugin_manager import get_plugin_manager
from opendlc.progress import track
from opendlc.quant.calibrate import cpu_session
from opendlc.quant.export import dequantized_values, to_qdq_model
from opendlc.schemas import QuantizationSchema
from opendlc.targets import Backend

log = logging.getLogger("opendlc.quant.seq_mse")

TARGET_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DEFAULT_FRACTIONS = tuple(np.round(np.linspace(0.5, 1.0, 21), 4).tolist())
DEFAULT_MAX_POSITIONS = 2048


@dataclass(frozen=True)
class Layer:
    """A layer whose weight encoding seq_mse chooses."""

    node: onnx.NodeProto
    input: str
    weight: str


@dataclass
class SeqMseResult:
    """Per layer: output error (on the calibration inputs) before and after."""

    errors: dict[str, tuple[float, float]] = field(default_factory=dict)  # weight -> (before, after)
    skipped: dict[str, str] = field(default_factory=dict)  # weight -> why

    def report(self) -> list[str]:
        before = sum(b for b, _ in self.errors.values())
        after = sum(a for _, a in self.errors.values())
        changed = sum(1 for b, a in self.errors.values() if a < b)
        line = (
            f"seq_mse: {len(self.errors)} weights searched, {changed} changed; summed layer output error "
            f"{before:.4g} -> {after:.4g}"
        )
        lines = [line]
        if self.skipped:
            lines.append(
                f"seq_mse: {len(self.skipped)} weights kept their encodings: "
                + "; ".join(f"{k} ({v})" for k, v in list(self.skipped.items())[:5])
                + (" ..." if len(self.skipped) > 5 else "")
            )
        return lines


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def find_layers(model: onnx.ModelProto, encodings: EncodingSet) -> tuple[list[Layer], dict[str, str]]:
    """Layers with a constant, int-encoded weight not taken from overrides; and the ones skipped."""
    inits = {t.name: t for t in model.graph.initializer}
    found, skipped, seen = [], {}, set()
    for n in model.graph.node:
        if n.op_type not in TARGET_OPS or len(n.input) < 2:
            continue
        w = n.input[1]
        enc = encodings.tensors.get(w)
        if w not in inits or enc is None or enc.dtype != "int" or w in seen:
            continue
        seen.add(w)  # a shared weight: the first layer using it decides (as the plan does)
        if enc.source == "overrides":
            skipped[w] = "override"
        elif n.op_type == "MatMul" and len(inits[w].dims) != 2:
            skipped[w] = "batched MatMul weight"
        elif n.op_type == "ConvTranspose" and (
            _attr(n, "output_shape", None) or _attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
        ):
            skipped[w] = "ConvTranspose with output_shape/auto_pad"
        else:
            found.append(Layer(n, n.input[0], w))
    return found, skipped


# ---- the rows a layer multiplies its weights with ---------------------------------------------------
def _conv_geometry(node: onnx.NodeProto, nsp: int) -> tuple[list[int], list[int], int]:
    """Strides, dilations and group count of a (transposed) convolution with ``nsp`` spatial axes."""
    strides = list(_attr(node, "strides", [1] * nsp))
    dil = list(_attr(node, "dilations", [1] * nsp))
    return strides, dil, int(_attr(node, "group", 1))


def _spatial_pads(
    node: onnx.NodeProto, spatial: Sequence[int], kernel: Sequence[int]
) -> list[tuple[int, int]]:
    nsp = len(kernel)
    strides, dil, _ = _conv_geometry(node, nsp)
    auto = _attr(node, "auto_pad", b"NOTSET")
    if auto in (b"SAME_UPPER", b"SAME_LOWER"):
        pads = []
        for s, st, k, d in zip(spatial, strides, kernel, dil, strict=True):
            out = -(-s // st)
            total = max(0, (out - 1) * st + (k - 1) * d + 1 - s)
            small = total // 2
            pads.append((small, total - small) if auto == b"SAME_UPPER" else (total - small, small))
        return pads
    if auto == b"VALID":
        return [(0, 0)] * nsp
    p = list(_attr(node, "pads", [0] * 2 * nsp))
    return list(zip(p[:nsp], p[nsp:], strict=True))


def _pad_or_crop(x: np.ndarray, pads: Sequence[tuple[int, int]]) -> np.ndarray:
    """Zero-pad the spatial axes of [N, C, *S] (negative amounts crop)."""
    crop = tuple(slice(max(0, -b), x.shape[2 + i] - max(0, -e)) for i, (b, e) in enumerate(pads))
    x = x[(slice(None), slice(None), *crop)]
    return np.pad(x, [(0, 0), (0, 0), *((max(0, b), max(0, e)) for b, e in pads)])


def _patches(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    dil: Sequence[int],
    groups: int,
    rng: np.random.Generator,
    max_positions: int,
) -> np.ndarray:
    """im2col rows of a padded [N, C, *S] input: [groups, positions, C/groups * prod(kernel)], at most
    ``max_positions`` positions (a random subset beyond that)."""
    nsp = len(kernel)
    ext = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
    win = sliding_window_view(x, ext, axis=tuple(range(2, 2 + nsp)))  # [N, C, *O_all, *ext]
    win = win[(slice(None), slice(None), *(slice(None, None, s) for s in strides))]
    win = win[(Ellipsis, *(slice(None, None, d) for d in dil))]  # [N, C, *O, *k]
    out_shape = (win.shape[0], *win.shape[2 : 2 + nsp])
    total = int(np.prod(out_shape))
    flat = np.arange(total) if total <= max_positions else np.sort(rng.choice(total, max_positions, False))
    idx = np.unravel_index(flat, out_shape)
    rows = win[(idx[0], slice(None), *idx[1:])]  # advanced indices apart: [P, C, *k]
    p, c = rows.shape[0], rows.shape[1]
    return rows.reshape(p, groups, (c // groups) * int(np.prod(kernel))).transpose(1, 0, 2)


def _conv_rows(node: onnx.NodeProto, x: np.ndarray, w_shape: Sequence[int], rng, max_pos: int) -> np.ndarray:
    kernel = list(w_shape[2:])
    strides, dil, groups = _conv_geometry(node, len(kernel))
    xp = _pad_or_crop(x, _spatial_pads(node, x.shape[2:], kernel))
    return _patches(xp, kernel, strides, dil, groups, rng, max_pos)


def _conv_transpose_rows(
    node: onnx.NodeProto, x: np.ndarray, w_shape: Sequence[int], rng, max_pos: int
) -> np.ndarray:
    """A transposed convolution is a stride-1 convolution of the input with (stride - 1) zeros between
    its elements, padded by dilation * (kernel - 1) - pads (+ output_padding at the end)."""
    kernel = list(w_shape[2:])
    nsp = len(kernel)
    strides, dil, groups = _conv_geometry(node, nsp)
    out_pad = list(_attr(node, "output_padding", [0] * nsp))
    p = list(_attr(node, "pads", [0] * 2 * nsp))
    size = [(s - 1) * st + 1 for s, st in zip(x.shape[2:], strides, strict=True)]
    stuffed = np.zeros((*x.shape[:2], *size), x.dtype)
    stuffed[(slice(None), slice(None), *(slice(None, None, st) for st in strides))] = x
    pads = [
        (d * (k - 1) - p[i], d * (k - 1) - p[nsp + i] + out_pad[i])
        for i, (k, d) in enumerate(zip(kernel, dil, strict=True))
    ]
    return _patches(_pad_or_crop(stuffed, pads), kernel, [1] * nsp, dil, groups, rng, max_pos)


def _matrix_rows(node: onnx.NodeProto, x: np.ndarray, rng, max_pos: int) -> np.ndarray:
    if node.op_type == "Gemm" and _attr(node, "transA", 0):
        x = x.T
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] > max_pos:
        rows = rows[np.sort(rng.choice(rows.shape[0], max_pos, False))]
    return rows[None]


def layer_rows(layer: Layer, x: np.ndarray, w_shape: Sequence[int], rng, max_positions: int) -> np.ndarray:
    """The rows the layer's weight rows multiply: [groups, positions, K]."""
    op = layer.node.op_type
    if op == "Conv":
        return _conv_rows(layer.node, x, w_shape, rng, max_positions)
    if op == "ConvTranspose":
        return _conv_transpose_rows(layer.node, x, w_shape, rng, max_positions)
    return _matrix_rows(layer.node, x, rng, max_positions)


def weight_rows(layer: Layer, w: np.ndarray, groups: int) -> np.ndarray:
    """The weight as [M, K]: one row per output channel, in the order of :func:`layer_rows`' columns."""
    op = layer.node.op_type
    if op == "Conv":
        return w.reshape(w.shape[0], -1)
    if op == "ConvTranspose":  # [C, M/g, *k] -> the equivalent convolution's [M, C/g, *k], kernel flipped
        c, m_g, *k = w.shape
        conv = w.reshape(groups, c // groups, m_g, *k).swapaxes(1, 2)
        conv = np.flip(conv, axis=tuple(range(3, 3 + len(k))))
        return conv.reshape(groups * m_g, -1)
    if op == "Gemm" and _attr(layer.node, "transB", 0):
        return w
    return w.T


def encoding_index_of_rows(layer: Layer, enc: TensorEncoding, n_rows: int, groups: int) -> np.ndarray:
    """Which of the weight's encodings each output row uses (ConvTranspose's per-channel axis holds M/g
    channels shared by the groups)."""
    if len(enc.encodings) == 1:
        return np.zeros(n_rows, dtype=np.int64)
    if layer.node.op_type == "ConvTranspose":
        return np.arange(n_rows) % (n_rows // groups)
    return np.arange(n_rows)


def output_errors(d_rows: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Per output row m: d_m^T H_g(m) d_m, i.e. the squared output error the weight error d causes."""
    groups, k = gram.shape[0], gram.shape[1]
    d = d_rows.reshape(groups, -1, k)
    return np.einsum("gmk,gmk->gm", d @ gram, d).reshape(-1)


# ---- candidate encodings ----------------------------------------------------------------------------
@dataclass
class WeightQuantizer:
    """What turns a candidate range into a weight encoding: the parameter schema, the backend's
    constraints, and the options they take.  ``activations`` are the model's activation encodings
    (final: seq_mse changes only weights); constraints tying a weight to its layer's input and output
    scales (HTP's 16-bit multiplier floor) see them."""

    schema: QuantizationSchema
    backend: Backend
    model: onnx.ModelProto
    steps: tuple[int, int] | None = None
    activations: Mapping[str, TensorEncoding] = field(default_factory=dict)

    def encode(self, name: str, ranges: np.ndarray, like: TensorEncoding) -> TensorEncoding:
        """An encoding of ``name`` with one encoding per row of ``ranges`` [n, 2] (lo, hi)."""
        bw = like.encodings[0].bitwidth
        steps = self.steps if self.schema.symmetric else None
        encs = self.schema.encode_each(ranges[:, 0], ranges[:, 1], bw, steps=steps)
        trial = EncodingSet(dict(self.activations))  # a copy: whatever the constraints do stays in it
        trial.add(TensorEncoding(name, "param", encs, like.axis, "int", None, "seq_mse"))
        previous = logging.root.manager.disable
        logging.disable(logging.INFO)  # trial encodings: the backend's notes about them are noise
        try:
            self.backend.constrain_parameter(self.model, trial, name)
        finally:
            logging.disable(previous)
        return TensorEncoding(name, "param", list(trial[name].encodings), like.axis, "int", None, "seq_mse")


def channel_ranges(w: np.ndarray, enc: TensorEncoding) -> np.ndarray:
    """[n, 2] min and max of each encoded channel (or of the whole tensor)."""
    if len(enc.encodings) == 1:
        return np.array([[w.min(), w.max()]], dtype=np.float64)
    moved = np.moveaxis(w, enc.axis if enc.axis is not None else 0, 0).reshape(len(enc.encodings), -1)
    return np.stack([moved.min(axis=1), moved.max(axis=1)], axis=1).astype(np.float64)


def choose_encoding(
    layer: Layer,
    w: np.ndarray,
    gram: np.ndarray,
    enc: TensorEncoding,
    quantizer: WeightQuantizer,
    fractions: Sequence[float],
) -> tuple[TensorEncoding, float, float]:
    """The weight encoding with the smallest output error per channel; errors before and after."""
    groups = gram.shape[0]
    rows_w = weight_rows(layer, w, groups)
    index = encoding_index_of_rows(layer, enc, rows_w.shape[0], groups)
    n = len(enc.encodings)
    ranges = channel_ranges(w, enc)
    candidates = [enc] + [quantizer.encode(layer.weight, ranges * f, enc) for f in fractions]
    errors = np.empty((len(candidates), n))
    for i, cand in enumerate(candidates):
        d = weight_rows(layer, dequantized_values(w, cand) - w, groups)
        errors[i] = np.bincount(index, weights=output_errors(d, gram), minlength=n)
    best = np.argmin(errors, axis=0)  # ties keep the first: the current encoding
    chosen = [candidates[b].encodings[c] for c, b in enumerate(best)]
    if all(b == 0 for b in best):
        return enc, float(errors[0].sum()), float(errors[0].sum())
    new = TensorEncoding(layer.weight, "param", chosen, enc.axis, "int", None, "seq_mse")
    return new, float(errors[0].sum()), float(errors[best, np.arange(n)].sum())


# ---- evaluating the model incrementally --------------------------------------------------------------
def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """The names a node reads, including outer-scope names read inside its subgraphs."""
    names = [i for i in node.input if i]
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            inner = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                names += [i for i in _node_inputs(n) if i not in inner]
                inner |= set(n.output)
    return names


class IncrementalRunner:
    """Evaluates a model node by node on a few samples: :meth:`fetch` computes the requested tensors
    from what is already known, running each node once, and keeps only the tensors later nodes read.

    With ``encodings``, each step runs as the CPU QDQ simulation under the encodings of that moment,
    so nodes computed later see the encodings chosen in between.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        samples: Sequence[Mapping[str, np.ndarray]],
        encodings: EncodingSet | None,
        udo_packages: Sequence[str] = (),
    ) -> None:
        self.model, self.encodings, self.udo = model, encodings, list(udo_packages)
        self.inits = {t.name: t for t in model.graph.initializer}
        self.nodes = list(model.graph.node)
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.reads = [_node_inputs(n) for n in self.nodes]
        self.readers: dict[str, list[int]] = {}
        for i, names in enumerate(self.reads):
            for name in names:
                self.readers.setdefault(name, []).append(i)
        self.done = [False] * len(self.nodes)
        feeds = [i.name for i in model.graph.input if i.name not in self.inits]
        self.values = [{k: np.asarray(s[k]) for k in feeds} for s in samples]

    def _known(self, name: str) -> bool:
        return name in self.inits or name in self.values[0] or not name

    def fetch(self, names: Sequence[str]) -> list[dict[str, np.ndarray]]:
        """The values of ``names`` for every sample."""
        needed, stack = set(), [n for n in names if not self._known(n)]
        while stack:
            t = stack.pop()
            i = self.producer.get(t)
            if i is None or i in needed:
                continue
            needed.add(i)
            stack += [n for n in self.reads[i] if not self._known(n)]
        if needed:
            self._run(sorted(needed), names)
        fetched = [{n: v[n] for n in names if n not in self.inits} for v in self.values]
        self._forget()
        return fetched

    def _run(self, order: list[int], wanted: Sequence[str]) -> None:
        produced = [o for i in order for o in self.nodes[i].output if o]
        for i in order:
            self.done[i] = True
        keep = [o for o in produced if o in wanted or any(not self.done[r] for r in self.readers.get(o, []))]
        reads = {n for i in order for n in self.reads[i]}
        feeds = sorted(n for n in reads if n in self.values[0])
        inits = [self.inits[n] for n in sorted(reads) if n in self.inits]
        graph = helper.make_graph(
            [self.nodes[i] for i in order],
            "seq_mse_step",
            [
                helper.make_tensor_value_info(
                    n, helper.np_dtype_to_tensor_dtype(self.values[0][n].dtype), None
                )
                for n in feeds
            ],
            [onnx.ValueInfoProto(name=o) for o in keep],
            inits,
        )
        step = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        step.ir_version = self.model.ir_version
        step.functions.extend(self.model.functions)
        if self.encodings is not None:
            names = set(feeds) | set(produced) | {t.name for t in inits}
            sub = EncodingSet()
            for n in names & set(self.encodings.tensors):
                sub.add(self.encodings[n])
            step = to_qdq_model(Container(model=step, encodings=sub))
        sess = cpu_session(step, udo_packages=self.udo)
        for v in self.values:
            outs = sess.run(keep, {n: v[n] for n in feeds})
            v.update(zip(keep, outs, strict=True))

    def _forget(self) -> None:
        """Drop tensors no node still to run reads."""
        for v in self.values:
            for name in [n for n in v if all(self.done[r] for r in self.readers.get(n, []))]:
                del v[name]


# ---- the algorithm ------------------------------------------------------------------------------------
def _depths(model: onnx.ModelProto, layers: Sequence[Layer]) -> dict[str, int]:
    """Per layer (by weight): 1 + the largest depth of the layers upstream of it.  Layers of equal depth
    do not feed each other, so their inputs are known together."""
    by_node = {id(layer.node): layer for layer in layers}
    level: dict[str, int] = {}
    depth: dict[str, int] = {}
    for node in model.graph.node:
        d = max((level.get(i, 0) for i in _node_inputs(node)), default=0)
        layer = by_node.get(id(node))
        if layer is not None:
            d = depth[layer.weight] = d + 1
        for o in node.output:
            level[o] = d
    return depth


def _as_seen(x: np.ndarray, name: str, encodings: EncodingSet | None) -> np.ndarray:
    """The input as the quantized layer reads it (quantize-dequantize is idempotent, so values already
    simulated pass unchanged)."""
    t = encodings.tensors.get(name) if encodings is not None else None
    if t is None or t.dtype != "int" or len(t.encodings) != 1:
        return x
    return t.encodings[0].quantize_dequantize(x)


def input_gram(
    layer: Layer,
    inputs: Sequence[np.ndarray],
    w_shape: Sequence[int],
    rng: np.random.Generator,
    max_positions: int = DEFAULT_MAX_POSITIONS,
    *,
    centered: bool = False,
) -> np.ndarray:
    """H = sum of x x^T over the layer's input rows on every sample: [groups, K, K] (float64).

    ``centered``: the rows' mean taken out first, so ``d^T H d`` is the error's spread around its
    mean -- what is left once bias correction has removed the mean output shift."""
    gram, total, count = None, None, 0
    for x in inputs:
        rows = layer_rows(layer, np.asarray(x, dtype=np.float32), w_shape, rng, max_positions)
        g = np.matmul(rows.transpose(0, 2, 1), rows).astype(np.float64)
        s = rows.sum(axis=1, dtype=np.float64)
        gram, total = (g, s) if gram is None else (gram + g, total + s)
        count += rows.shape[1]
    assert gram is not None and total is not None
    if centered:
        gram = gram - np.einsum("gk,gl->gkl", total, total) / count
    return gram


def seq_mse(
    model: onnx.ModelProto,
    encodings: EncodingSet,
    samples: Sequence[Mapping[str, np.ndarray]],
    options: Any,
    *,
    inputs: str = "quantized",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    max_positions: int = DEFAULT_MAX_POSITIONS,
    seed: int = 0,
    progress: bool = True,
    bias_corrected: Sequence[str] = (),
) -> SeqMseResult:
    """Choose the weight encodings of ``model``'s layers in ``encodings`` (changed in place) by their
    output error on ``samples``.  ``options`` is the :class:`~opendlc.quant.options.QuantizerOptions`
    (parameter schema, backend, steps, UDO packages); ``inputs`` is "quantized" (sequential: the
    model quantized so far) or "float".  ``bias_corrected`` names the weights whose layer's bias will
    be corrected afterwards (``bias_correction``): their search ignores the mean output shift, which
    the correction removes."""
    if inputs not in ("quantized", "float"):
        raise ValueError(f"inputs must be 'quantized' or 'float', not {inputs!r}")
    pm = get_plugin_manager()
    quantizer = WeightQuantizer(
        pm.schemas.get(options.param_quantizer_schema),
        pm.backends.get(options.target_backend),
        model,
        options.restrict_quantization_steps,
        {t.name: t for t in encodings.of_kind("activation")},
    )
    layers, skipped = find_layers(model, encodings)
    result = SeqMseResult(skipped=dict(skipped))
    if not layers or not samples:
        return result
    inits = {t.name: t for t in model.graph.initializer}
    depth = _depths(model, layers)
    udo = [*options.udo_package_path, *options.op_package_lib]
    seen = encodings if inputs == "quantized" else None
    runner = IncrementalRunner(model, samples, seen, udo)
    rng = np.random.default_rng(seed)
    levels = sorted(set(depth.values()))
    for lv in track(levels, "seq_mse", unit="depths", enabled=progress):
        group = [layer for layer in layers if depth[layer.weight] == lv]
        values = runner.fetch(sorted({layer.input for layer in group}))
        for layer in group:
            w = numpy_helper.to_array(inits[layer.weight]).astype(np.float64)
            try:
                xs = [_as_seen(np.asarray(v[layer.input]), layer.input, seen) for v in values]
                centered = layer.weight in bias_corrected
                gram = input_gram(layer, xs, w.shape, rng, max_positions, centered=centered)
                rows_w = weight_rows(layer, w, gram.shape[0])
                if rows_w.shape[1] != gram.shape[1] or rows_w.shape[0] % gram.shape[0]:
                    raise ValueError("shapes")
            except ValueError:
                result.skipped[layer.weight] = "input and weight shapes do not match"
                continue
            new, before, after = choose_encoding(
                layer, w, gram, encodings[layer.weight], quantizer, fractions
            )
            encodings.add(new)
            result.errors[layer.weight] = (before, after)
    for line in result.report():
        log.info(line)
    return result
