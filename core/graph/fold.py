"""Folding constant per-channel arithmetic into the convolution or matrix product next to it.

- BatchNormalization (inference form) after Conv, ConvTranspose, Gemm, MatMul and MatMul+Add;
- Mul / Div / Add / Sub by a per-output-channel constant after Conv, ConvTranspose, Gemm;
- Mul / Div by a per-input-channel constant before a Conv (exact for any padding: the padded zeros
  stay zero), and Add / Sub before a Conv that pads nothing.

Each fold computes in float64 and stores the parameters in their own dtype: the float function is
kept up to rounding.  Parameters shared with other nodes are copied, never changed under them.
"""

from __future__ import annotations

import numpy as np
import onnx

from opendlc.graph.view import GraphView
from opendlc.model_edit import inferred_types

_ARITH = {"Mul", "Div", "Add", "Sub"}


def fold_batch_norms(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every foldable BatchNormalization merged into its producer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(out)
    fold_batch_norms_in(view, tensor_ranks(out))
    view.prune()
    return out


def tensor_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor whose shape inference knows it (for folds that depend on the layout; without
    shapes the layout-dependent folds are skipped)."""
    ranks = {
        name: len(t.tensor_type.shape.dim)
        for name, t in inferred_types(model).items()
        if t.tensor_type.HasField("shape")
    }
    for t in model.graph.initializer:
        ranks[t.name] = len(t.dims)
    return ranks


# BatchNormalization ----------------------------------------------------------------------------
def _bn_affine(view: GraphView, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """BN as y = a*x + c per channel, or None when it is not a constant inference-mode BN."""
    if len(bn.output) != 1 and any(bn.output[1:]):
        return None  # training-mode outputs are read
    if view.attr(bn, "training_mode", 0):
        return None
    params = [view.const(n) for n in bn.input[1:5]]
    if any(p is None for p in params) or len({p.shape for p in params}) != 1 or params[0].ndim != 1:
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    eps = float(view.attr(bn, "epsilon", 1e-5))
    a = gamma / np.sqrt(var + eps)
    return a, beta - a * mean


def fold_batch_norms_in(view: GraphView, ranks: dict[str, int]) -> list[str]:
    """Fold BNs in place; returns one line per fold."""
    done: list[str] = []
    for bn in [n for n in view.graph.node if n.op_type == "BatchNormalization"]:
        affine = _bn_affine(view, bn)
        producer = view.producer.get(bn.input[0])
        if affine is None or producer is None or view.sole_consumer(bn.input[0]) is not bn:
            continue
        a, c = affine
        if _scale_and_shift_output(view, producer, a, c, ranks):
            view.absorb_successor(producer, bn)
            done.append(f"folded BatchNormalization '{bn.name or bn.output[0]}' into {producer.op_type}")
    return done


# Output side -----------------------------------------------------------------------------------
def _out_channels(view: GraphView, node: onnx.NodeProto) -> int | None:
    w = view.const(node.input[1]) if len(node.input) > 1 else None
    if w is None:
        return None
    if node.op_type == "Conv":
        return w.shape[0]
    if node.op_type == "ConvTranspose":
        return w.shape[1] * int(view.attr(node, "group", 1))
    if node.op_type == "Gemm":
        return w.shape[0] if view.attr(node, "transB", 0) else w.shape[1]
    if node.op_type == "MatMul" and w.ndim == 2:
        return w.shape[1]
    return None


def _scale_and_shift_output(
    view: GraphView, node: onnx.NodeProto, a: np.ndarray, c: np.ndarray, ranks: dict[str, int]
) -> bool:
    """Make ``node`` compute a*y + c (per output channel) instead of y; False (unchanged) if it cannot."""
    op = node.op_type
    if op == "Add":  # MatMul + Add(bias) + BN: fold into both
        return _scale_and_shift_matmul_add(view, node, a, c, ranks)
    channels = _out_channels(view, node)
    if channels is None or channels != a.size:
        return False
    w = view.const(node.input[1])
    has_bias_input = len(node.input) > 2 and bool(node.input[2])
    old_bias = view.const(node.input[2]) if has_bias_input else None
    if not np.issubdtype(w.dtype, np.floating) or (has_bias_input and old_bias is None):
        return False  # quantized weights, or a computed bias: leave the node alone
    w64 = w.astype(np.float64)
    if op == "Conv":
        w_new = w64 * a.reshape((-1,) + (1,) * (w.ndim - 1))
    elif op == "ConvTranspose":
        g = int(view.attr(node, "group", 1))
        cin, cout_g = w.shape[0], w.shape[1]
        shaped = w64.reshape((g, cin // g, cout_g) + w.shape[2:])
        w_new = (shaped * a.reshape((g, 1, cout_g) + (1,) * (w.ndim - 2))).reshape(w.shape)
    elif op == "Gemm":
        w_new = w64 * (a[:, None] if view.attr(node, "transB", 0) else a[None, :])
    elif op == "MatMul":
        if ranks.get(node.output[0]) != 2 or ranks.get(node.input[0]) != 2:
            return False  # BN's channel axis is 1: only a 2-D product has its columns there
        w_new = w64 * a[None, :]
        node.op_type = "Gemm"  # MatMul has no bias: Gemm(A, B', c) is the same product plus the shift
    else:
        return False
    if op == "Gemm":
        # C may be a scalar, a row, a column or a matrix: numpy's broadcasting scales its columns
        b64 = 0.0 if old_bias is None else float(view.attr(node, "beta", 1.0)) * old_bias.astype(np.float64)
        new_bias = b64 * a + c
        view.set_attr(node, "beta", 1.0)
    else:
        b64 = np.zeros(a.size) if old_bias is None else old_bias.astype(np.float64)
        new_bias = a * b64 + c
    view.set_param(node, 1, w_new.astype(w.dtype))
    view.set_param(node, 2, np.asarray(new_bias).astype(w.dtype), base_name=f"{node.output[0]}_bias")
    return True


def _scale_and_shift_matmul_add(
    view: GraphView, add: onnx.NodeProto, a: np.ndarray, c: np.ndarray, ranks: dict[str, int]
) -> bool:
    """MatMul(A, B) + bias, 2-D: scale B's columns and the bias, shift the bias."""
    for mm_index in (0, 1):
        mm = view.producer.get(add.input[mm_index])
        if mm is not None and mm.op_type == "MatMul":
            break
    else:
        return False
    bias = view.const(add.input[1 - mm_index])
    if bias is None or view.sole_consumer(mm.output[0]) is not add or ranks.get(add.output[0]) != 2:
        return False
    if not np.issubdtype(bias.dtype, np.floating) or per_channel(bias, 2, a.size) is None:
        return False
    w = view.const(mm.input[1]) if len(mm.input) > 1 else None
    if w is None or w.ndim != 2 or w.shape[1] != a.size or ranks.get(mm.input[0]) != 2:
        return False
    if not np.issubdtype(w.dtype, np.floating):
        return False
    view.set_param(mm, 1, (w.astype(np.float64) * a[None, :]).astype(w.dtype))
    view.set_param(add, 1 - mm_index, (a * per_channel(bias, 2, a.size) + c).astype(bias.dtype))
    return True


def per_channel(value: np.ndarray, rank: int, channels: int, axis: int = 1) -> np.ndarray | None:
    """``value`` as one number per channel on ``axis`` of a rank-``rank`` tensor, if it broadcasts so.

    None when broadcasting ``value`` would vary along another axis or enlarge the tensor.
    """
    if value.ndim > rank or not np.issubdtype(value.dtype, np.floating):
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float64), (channels,)).copy()


def _const_operand(view: GraphView, node: onnx.NodeProto, data: str) -> tuple[np.ndarray, int] | None:
    """The constant operand of a binary ``node`` whose other operand is ``data``, with its index."""
    if len(node.input) != 2:
        return None
    if node.input[0] == data and node.input[1] != data:
        value = view.const(node.input[1])
        return None if value is None else (value, 1)
    if node.input[1] == data and node.input[0] != data:
        value = view.const(node.input[0])
        return None if value is None else (value, 0)
    return None


def _affine_of(node: onnx.NodeProto, value: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (a, c) with ``node``(y) == a*y + c, or None (x/y and c-y are not folded)."""
    op = node.op_type
    zeros, ones = np.zeros_like(value), np.ones_like(value)
    if op == "Mul":
        return value, zeros
    if op == "Add":
        return ones, value
    if op == "Div" and index == 1 and np.all(value != 0):
        return 1.0 / value, zeros
    if op == "Sub" and index == 1:
        return ones, -value
    return None


def fold_output_affine_in(view: GraphView, ranks: dict[str, int]) -> list[str]:
    """Fold Mul/Div/Add/Sub by per-output-channel constants into the Conv/ConvTranspose/Gemm before."""
    done: list[str] = []
    changed = True
    while changed:
        changed = False
        for node in list(view.graph.node):
            if node.op_type not in ("Conv", "ConvTranspose", "Gemm"):
                continue
            nxt = view.sole_consumer(node.output[0])
            channels = _out_channels(view, node)
            if nxt is None or nxt.op_type not in _ARITH or channels is None:
                continue
            operand = _const_operand(view, nxt, node.output[0])
            if operand is None:
                continue
            value, index = operand
            rank = 2 if node.op_type == "Gemm" else view.const(node.input[1]).ndim
            values = per_channel(value, rank, channels)
            affine = None if values is None else _affine_of(nxt, values, index)
            if affine is None or not _scale_and_shift_output(view, node, *affine, ranks):
                continue
            view.absorb_successor(node, nxt)
            done.append(
                f"folded {nxt.op_type} by a constant into {node.op_type} '{node.name or nxt.output[0]}'"
            )
            changed = True
    return done


# Input side ------------------------------------------------------------------------------------
def pads_nothing(view: GraphView, conv: onnx.NodeProto) -> bool:
    """Whether a convolution adds no padding (explicit ``pads`` all zero, or ``auto_pad`` VALID)."""
    auto_pad = view.attr(conv, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad == "VALID":
        return True
    return auto_pad == "NOTSET" and not any(view.attr(conv, "pads", []) or [])


def fold_input_affine_in(view: GraphView) -> list[str]:
    """Fold Mul/Div (and, when the Conv pads nothing, Add/Sub) by per-input-channel constants
    feeding a Conv into its weights and bias."""
    done: list[str] = []
    changed = True
    while changed:
        changed = False
        for conv in list(view.graph.node):
            if conv.op_type != "Conv" or len(conv.input) < 2:
                continue
            prev = view.producer.get(conv.input[0])
            w = view.const(conv.input[1])
            if (
                prev is None
                or w is None
                or prev.op_type not in _ARITH
                or not np.issubdtype(w.dtype, np.floating)
            ):
                continue
            if view.sole_consumer(prev.output[0]) is not conv or len(prev.input) != 2:
                continue
            data = next((i for i in prev.input if view.const(i) is None), None)
            operand = None if data is None else _const_operand(view, prev, data)
            if operand is None:
                continue
            g = int(view.attr(conv, "group", 1))
            cin = w.shape[1] * g
            values = per_channel(operand[0], w.ndim, cin)
            affine = None if values is None else _affine_of(prev, values, operand[1])
            if affine is None:
                continue
            a, c = affine
            shifts = np.any(c != 0)
            if shifts and not pads_nothing(view, conv):
                continue  # padded zeros would not be shifted: not exact
            w64 = w.astype(np.float64)
            cout_g, cin_g = w.shape[0] // g, w.shape[1]
            grouped = w64.reshape((g, cout_g, cin_g) + w.shape[2:])
            new_w = grouped * a.reshape((g, 1, cin_g) + (1,) * (w.ndim - 2))
            bias = view.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
            if len(conv.input) > 2 and conv.input[2] and bias is None:
                continue
            b64 = np.zeros(w.shape[0]) if bias is None else bias.astype(np.float64)
            if shifts:
                # W * (x + c) = W * x + sum over the window of W * c (no padding: every tap sees c)
                spatial = tuple(range(3, 3 + w.ndim - 2))
                per_out = (grouped.sum(axis=spatial) * c.reshape(g, 1, cin_g)).sum(axis=2)
                b64 = b64 + per_out.reshape(-1)
            view.set_param(conv, 1, new_w.reshape(w.shape).astype(w.dtype))
            if shifts or bias is not None:
                view.set_param(conv, 2, b64.astype(w.dtype), base_name=f"{conv.output[0]}_bias")
            view.replace_uses(prev.output[0], data)
            view.remove_node(prev)
            done.append(
                f"folded {prev.op_type} by a constant into the following Conv '{conv.name or conv.output[0]}'"
            )
            changed = True
    return done
