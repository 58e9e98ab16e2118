"""Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction", ICCV 2019), on ONNX models.

For two convolutions in a row, ``Conv1 -> [Relu | LeakyRelu | PRelu | nothing] -> Conv2``, output
channel ``i`` of Conv1 can be divided by any ``s_i > 0`` if input channel ``i`` of Conv2 is multiplied
by it: these activations are positively homogeneous per channel (``f(x / s) = f(x) / s``), and Conv2's
zero padding stays zero.  Choosing ``s_i = sqrt(r1_i / r2_i)`` (``r`` the largest |weight| of the
channel) gives both sides the same range ``sqrt(r1_i * r2_i)``, so one per-tensor weight encoding
fits every channel better.  Pairs that share a convolution are balanced in turn until the scales settle.

Not equalized across: Clip / Relu6 / HardSwish / HardSigmoid / Sigmoid and anything else that is not
positively homogeneous (``Clip(x / s, 0, 6) != Clip(x, 0, 6) / s``); a tensor read by more than one
node (a residual branch, an SE gate); grouped producers and consumers whose channel groups do not line
up are handled (depthwise included), any other op between the two convolutions ends the chain.

High-bias absorption is not done: with ReLU it is exact only where the pre-activation is known never
to fall below the absorbed amount, which data-free statistics (BN's beta - 3 gamma) make likely but
not certain; with no activation it is exact only when Conv2 pads nothing.  Opendlc does not change the
float function, so it leaves biases where they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from opendlc.graph.fold import fold_batch_norms_in, fold_output_affine_in, per_channel, tensor_ranks
from opendlc.graph.view import GraphView

# activations f with f(x / s) == f(x) / s for every s > 0 (per channel for PRelu's per-channel slope)
HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu"}


@dataclass(frozen=True)
class Pair:
    """Two convolutions that can be equalized, and the activation between them (if any)."""

    first: str  # node names (made unique if empty)
    second: str
    activation: str | None


@dataclass
class Equalized:
    model: onnx.ModelProto
    pairs: list[Pair] = field(default_factory=list)
    iterations: int = 0
    report: list[str] = field(default_factory=list)


def equalize(model: onnx.ModelProto, *, max_iterations: int = 100, tolerance: float = 1e-4) -> Equalized:
    """Fold BatchNormalization (and per-channel affine) into convolutions, then equalize every pair.

    ``model`` is not modified.  Weights held in ``Constant`` nodes are moved to initializers first.
    """
    from opendlc.graph.normalize import constants_to_initializers

    out = constants_to_initializers(model)
    view = GraphView(out)
    _name_nodes(view)
    ranks = tensor_ranks(out)
    report = fold_batch_norms_in(view, ranks) + fold_output_affine_in(view, ranks)
    report = [f"{len(report)} BatchNormalization / affine folds"] if report else []
    pairs = find_pairs(view)
    iterations = 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007 - the count is reported
        largest = max((abs(np.log(_equalize_pair(view, p))).max(initial=0.0) for p in pairs), default=0.0)
        if largest < tolerance:
            break
    view.prune()
    report.append(f"equalized {len(pairs)} convolution pairs in {iterations} iterations")
    return Equalized(out, pairs, iterations, report)


def _name_nodes(view: GraphView) -> None:
    for node in view.graph.node:
        if not node.name:
            node.name = view.fresh_name(f"{node.op_type}_{node.output[0]}")
    view.refresh()


def _conv_params(view: GraphView, node: onnx.NodeProto | None) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(weight, bias) of a Conv whose parameters are float constants, else None."""
    if node is None or node.op_type != "Conv" or len(node.input) < 2:
        return None
    w = view.const(node.input[1])
    if w is None or not np.issubdtype(w.dtype, np.floating) or w.ndim < 3:
        return None
    if len(node.input) > 2 and node.input[2]:
        b = view.const(node.input[2])
        return None if b is None else (w, b)
    return w, None


def find_pairs(view: GraphView) -> list[Pair]:
    """Every ``Conv -> [Relu | LeakyRelu | PRelu | nothing] -> Conv`` whose middle tensors have one reader."""
    pairs = []
    for first in view.graph.node:
        params = _conv_params(view, first)
        if params is None:
            continue
        nxt = view.sole_consumer(first.output[0])
        activation = None
        if nxt is not None and nxt.op_type in HOMOGENEOUS:
            if nxt.op_type == "PRelu" and not _slope_is_per_channel(
                view, nxt, params[0].shape[0], params[0].ndim
            ):
                continue
            activation, nxt = nxt, view.sole_consumer(nxt.output[0])
        second = _conv_params(view, nxt)
        if second is None or nxt.input[0] != (activation or first).output[0]:
            continue
        g2 = int(view.attr(nxt, "group", 1))
        if second[0].shape[1] * g2 != params[0].shape[0]:
            continue
        pairs.append(Pair(first.name, nxt.name, activation.op_type if activation else None))
    return pairs


def _slope_is_per_channel(view: GraphView, prelu: onnx.NodeProto, channels: int, rank: int) -> bool:
    """PRelu commutes with per-channel scaling only if its slope varies at most along the channels."""
    slope = view.const(prelu.input[1])
    return slope is not None and per_channel(slope, rank, channels) is not None


def channel_ranges(w1: np.ndarray, w2: np.ndarray, group2: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel |max| of the first conv's outputs and of the second conv's matching inputs."""
    r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1)
    cout2, cin_g = w2.shape[0], w2.shape[1]
    grouped = np.abs(w2.reshape((group2, cout2 // group2, cin_g, -1)))
    r2 = grouped.max(axis=(1, 3)).reshape(-1)  # channel g * cin_g + j
    return r1.astype(np.float64), r2.astype(np.float64)


def _equalize_pair(view: GraphView, pair: Pair) -> np.ndarray:
    """Balance one pair in place; returns the scales applied."""
    nodes = {n.name: n for n in view.graph.node}
    first, second = nodes[pair.first], nodes[pair.second]
    w1, b1 = _conv_params(view, first)
    w2, _ = _conv_params(view, second)
    g2 = int(view.attr(second, "group", 1))
    r1, r2 = channel_ranges(w1, w2, g2)
    usable = (r1 > 0) & (r2 > 0)  # a dead channel keeps its scale
    s = np.ones_like(r1)
    s[usable] = np.sqrt(r1[usable] / r2[usable])
    view.set_param(first, 1, (w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1))).astype(w1.dtype))
    if b1 is not None:
        view.set_param(first, 2, (b1 / s).astype(b1.dtype))
    cout2, cin_g = w2.shape[0], w2.shape[1]
    grouped = w2.astype(np.float64).reshape((g2, cout2 // g2, cin_g) + w2.shape[2:])
    scaled = grouped * s.reshape((g2, 1, cin_g) + (1,) * (w2.ndim - 2))
    view.set_param(second, 1, scaled.reshape(w2.shape).astype(w2.dtype))
    return s
