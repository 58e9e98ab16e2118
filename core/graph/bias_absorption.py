"""High-bias absorption after cross-layer equalization, only where it keeps the float function exactly.

For a pair ``Conv1 -> [act] -> Conv2``, a per-channel amount ``c`` can leave Conv1's bias and reach
Conv2's as ``W2 . c`` (summed over the kernel) when two things hold:

- Conv2 pads nothing.  A constant input channel ``c_i`` then adds the same ``sum(W2[:, i]) * c_i`` to
  every output position; with zero padding the border positions would see fewer taps (not a bias).
  ConvTranspose consumers are left out for the same reason (taps overlap unevenly).
- ``act(y) == act(y - c) + c`` for every value Conv1 can produce.  With no activation that holds for any
  ``c``.  For Relu / LeakyRelu / PRelu it holds iff ``y >= c >= 0`` always (the activation is then the
  identity on that channel), so ``c`` is at most a *proven* lower bound of the pre-activation: interval
  arithmetic from the range of Conv1's input (the output range of a Relu, Clip, Sigmoid, HardSigmoid,
  HardSwish, Tanh, Softmax producer, through pooling).  A bound seen on calibration data is not a
  proof: on PP-OCR cls almost every channel whose calibration minimum was positive went below it on
  other crops.

How much to absorb with no activation (any amount is exact) is a choice: the middle of the channel's
range, so that the channels share one per-tensor range as narrow as possible.  The range is the proven
interval when it is finite, else the range observed on the given samples, else nothing is absorbed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from opendlc.graph.fold import pads_nothing
from opendlc.graph.view import GraphView

Bounds = tuple[float, float]
UNBOUNDED: Bounds = (-np.inf, np.inf)
# ops whose output range is that of their (first) input, or that range joined with 0 (padding)
_PASS_THROUGH = {
    "Identity",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "MaxPool",
    "GlobalMaxPool",
}
_AVERAGING = {"AveragePool", "GlobalAveragePool", "ReduceMean"}


@dataclass(frozen=True)
class Absorbed:
    first: str
    second: str
    amount: np.ndarray  # per channel, taken out of ``first``'s bias


def tensor_bounds(view: GraphView, name: str, depth: int = 16) -> Bounds:
    """A proven (lower, upper) bound of every value of tensor ``name`` (possibly infinite)."""
    value = view.const(name)
    if value is not None:
        return (float(value.min()), float(value.max())) if value.size else UNBOUNDED
    node = view.producer.get(name)
    if node is None or depth == 0:
        return UNBOUNDED
    op = node.op_type

    def inner() -> Bounds:
        return tensor_bounds(view, node.input[0], depth - 1)

    if op == "Relu":
        lo, hi = inner()
        return max(lo, 0.0), max(hi, 0.0)
    if op == "Clip":
        lo, hi = inner()
        low, high = _clip_limits(view, node)
        return float(np.clip(lo, low, high)), float(np.clip(hi, low, high))
    if op in ("Sigmoid", "HardSigmoid", "Softmax"):
        return 0.0, 1.0
    if op == "Tanh":
        return -1.0, 1.0
    if op == "HardSwish":  # x * relu6(x + 3) / 6 has its minimum -0.375 at x = -1.5, and is <= max(x, 0)
        return -0.375, max(inner()[1], 0.0)
    if op in _PASS_THROUGH:
        return inner()
    if op in _AVERAGING:  # a mean stays within the range; padded zeros may join it
        lo, hi = inner()
        if op == "AveragePool" and view.attr(node, "count_include_pad", 0) and not pads_nothing(view, node):
            return min(lo, 0.0), max(hi, 0.0)
        return lo, hi
    return UNBOUNDED


def _clip_limits(view: GraphView, node: onnx.NodeProto) -> Bounds:
    """Clip's (min, max): attributes before opset 11, optional inputs since; unknown means unbounded."""
    limits = [float(view.attr(node, "min", -np.inf)), float(view.attr(node, "max", np.inf))]
    for side, index in enumerate((1, 2)):
        if len(node.input) > index and node.input[index]:
            value = view.const(node.input[index])
            known = value is not None and value.size == 1
            limits[side] = float(value.reshape(-1)[0]) if known else (-np.inf, np.inf)[side]
    return limits[0], limits[1]


def conv_output_bounds(
    view: GraphView, node: onnx.NodeProto, canonical_w: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel proven bounds of a Conv's output from its input's bounds.

    ``canonical_w`` is (group, outputs per group, inputs per group, kernel).  Padded zeros count as
    inputs, so a padding convolution's input range is joined with 0."""
    lo, hi = tensor_bounds(view, node.input[0])
    if not pads_nothing(view, node):
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    w = canonical_w.astype(np.float64)
    positive = np.clip(w, 0, None).sum(axis=(2, 3)).reshape(-1)
    negative = np.clip(w, None, 0).sum(axis=(2, 3)).reshape(-1)
    b = np.zeros_like(positive) if bias is None else bias.astype(np.float64).reshape(-1)

    def side(weights: np.ndarray, limit: float) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # 0 * inf: a weight sum of 0 adds nothing
            return np.where(weights == 0, 0.0, weights * limit)

    return b + side(positive, lo) + side(negative, hi), b + side(positive, hi) + side(negative, lo)


def observed_channel_ranges(
    model: onnx.ModelProto, tensors: Sequence[str], samples: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (axis 1) min and max of ``tensors`` over ``samples``, run on onnxruntime's CPU."""
    from opendlc.quant.calibrate import cpu_session, with_outputs  # onnxruntime only when samples run

    session = cpu_session(with_outputs(model, tensors))
    wanted = [i.name for i in session.get_inputs()]
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for sample in samples:
        for name, value in zip(
            tensors, session.run(list(tensors), {k: sample[k] for k in wanted}), strict=True
        ):
            axes = tuple(a for a in range(value.ndim) if a != 1)
            lo, hi = value.min(axis=axes).astype(np.float64), value.max(axis=axes).astype(np.float64)
            if name in ranges:
                lo, hi = np.minimum(ranges[name][0], lo), np.maximum(ranges[name][1], hi)
            ranges[name] = (lo, hi)
    return ranges


def absorption_amount(
    activation: str | None,
    proven: tuple[np.ndarray, np.ndarray],
    observed: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """How much of each channel's bias can move on, exactly (see the module docstring)."""
    lower, upper = proven
    if activation is not None:  # Relu-like: only what the pre-activation provably never goes below
        return np.where(np.isfinite(lower), np.maximum(lower, 0.0), 0.0)
    with np.errstate(invalid="ignore"):  # -inf + inf where both sides are unbounded
        middle = np.where(np.isfinite(lower) & np.isfinite(upper), (lower + upper) / 2, np.nan)
    if observed is not None:
        middle = np.where(np.isnan(middle), (observed[0] + observed[1]) / 2, middle)
    return np.nan_to_num(middle, nan=0.0)


def second_bias_shift(canonical_w2: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """What Conv2's bias gains when its input channels carry ``amount`` less: W2 summed over the
    kernel, times ``amount`` (channel groups followed)."""
    groups, _, per_group, _ = canonical_w2.shape
    return np.einsum(
        "goik,gi->go", canonical_w2.astype(np.float64), amount.reshape(groups, per_group)
    ).reshape(-1)
