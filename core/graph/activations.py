"""Recognising hard-swish and hard-sigmoid written out as Add / Clip / Mul / Div.

Exporters (Paddle2ONNX, older PyTorch) spell these activations with four or five elementwise nodes.
The backend runs each as one op, so a quantizer must not put encodings between the pieces.  Here each
exactly equivalent pattern becomes one standard node:

- ``x * Clip(x + 3, 0, 6) / 6`` (``/ 6`` or ``* (1/6)``)            -> ``HardSwish(x)``   (opset >= 14)
- ``Clip(x + k, 0, m) / m``                                        -> ``HardSigmoid(x, 1/m, k/m)``
- ``Clip(x * a + b, 0, 1)``                                        -> ``HardSigmoid(x, a, b)``
- ``x * HardSigmoid(x, 1/6, 1/2)``                                 -> ``HardSwish(x)``   (opset >= 14)

``x * HardSigmoid(x, alpha)`` with another alpha (PP-OCR uses 0.2) is not a hard-swish and stays.
(onnxruntime inlines a ``HardSwish`` node, an ONNX function, as ``x * HardSigmoid(x, 1/6, 1/2)`` when
it optimises a model that already has one; the last pattern puts it back.)
Where the target opset has no HardSwish, the pattern stays and its inner tensors are reported as
not to be given encodings.
"""

from __future__ import annotations

import onnx

from opendlc.graph.view import GraphView, is_close, scalar

HARDSWISH_OPSET = 14


def _scalar_operand(view: GraphView, node: onnx.NodeProto) -> tuple[str, float] | None:
    """(data input, constant) of a binary node with one one-element constant operand."""
    if len(node.input) != 2:
        return None
    for data_index in (0, 1):
        value = scalar(view.const(node.input[1 - data_index]))
        if value is not None and view.const(node.input[data_index]) is None:
            if node.op_type in ("Div", "Sub") and data_index != 0:
                return None  # c / x, c - x: not the patterns here
            return node.input[data_index], value
    return None


def _clip_bounds(view: GraphView, clip: onnx.NodeProto) -> tuple[float | None, float | None]:
    lo = scalar(view.const(clip.input[1])) if len(clip.input) > 1 and clip.input[1] else None
    hi = scalar(view.const(clip.input[2])) if len(clip.input) > 2 and clip.input[2] else None
    if lo is None and any(a.name == "min" for a in clip.attribute):  # opset < 11 keeps them as attributes
        lo = float(view.attr(clip, "min"))
    if hi is None and any(a.name == "max" for a in clip.attribute):
        hi = float(view.attr(clip, "max"))
    return lo, hi


def _divides_by(view: GraphView, node: onnx.NodeProto | None, source: str, divisor: float) -> bool:
    """``node`` computes ``source / divisor`` (as Div, or as Mul by the reciprocal)."""
    if node is None or node.op_type not in ("Div", "Mul"):
        return False
    operand = _scalar_operand(view, node)
    if operand is None or operand[0] != source:
        return False
    return is_close(operand[1], divisor if node.op_type == "Div" else 1.0 / divisor)


def _multiplies(node: onnx.NodeProto | None, a: str, b: str) -> bool:
    return node is not None and node.op_type == "Mul" and sorted(node.input) == sorted([a, b]) and a != b


def _replace(
    view: GraphView, pattern: list[onnx.NodeProto], op_type: str, source: str, **attrs: float
) -> onnx.NodeProto:
    """Put one ``op_type`` node in place of ``pattern`` (whose last node's output it produces)."""
    last = pattern[-1]
    node = onnx.helper.make_node(
        op_type, [source], [last.output[0]], name=view.fresh_name(f"{op_type}_{last.output[0]}"), **attrs
    )
    view.insert_node(node, after=last)
    for n in pattern:
        view.remove_node(n)
    return node


def fuse_hard_activations_in(view: GraphView, opset: int) -> tuple[list[str], set[str]]:
    """Fuse in place.  Returns (one line per fusion, tensors inside patterns left unfused)."""
    done: list[str] = []
    inner: set[str] = set()
    swish_ok = opset >= HARDSWISH_OPSET
    for clip in [n for n in view.graph.node if n.op_type == "Clip"]:
        lo, hi = _clip_bounds(view, clip)
        if lo != 0.0 or hi is None or hi <= 0:
            continue
        pre = view.producer.get(clip.input[0])
        pre_operand = (
            _scalar_operand(view, pre) if pre is not None and pre.op_type in ("Add", "Sub") else None
        )
        if pre_operand is not None and view.sole_consumer(pre.output[0]) is clip:
            source, shift = pre_operand[0], pre_operand[1] * (1 if pre.op_type == "Add" else -1)
            head = [pre]
        else:
            source, shift, head = clip.input[0], 0.0, []
        nxt = view.sole_consumer(clip.output[0])
        # x * Clip(x + 3, 0, 6) / 6
        if head and _multiplies(nxt, source, clip.output[0]) and is_close(shift, 3.0) and is_close(hi, 6.0):
            div = view.sole_consumer(nxt.output[0])
            if _divides_by(view, div, nxt.output[0], 6.0):
                if swish_ok:
                    _replace(view, head + [clip, nxt, div], "HardSwish", source)
                    done.append(f"fused x*Clip(x+3,0,6)/6 into HardSwish '{div.output[0]}'")
                else:
                    inner |= {pre.output[0], clip.output[0], nxt.output[0]}
                continue
        # Clip(x + k, 0, m) / m
        if _divides_by(view, nxt, clip.output[0], hi):
            _replace(view, head + [clip, nxt], "HardSigmoid", source, alpha=1.0 / hi, beta=shift / hi)
            done.append(f"fused Clip(x+{shift:g},0,{hi:g})/{hi:g} into HardSigmoid '{nxt.output[0]}'")
            continue
        # Clip(x * a + b, 0, 1)
        if head and is_close(hi, 1.0) and pre.op_type == "Add":
            mul = view.producer.get(source)
            operand = _scalar_operand(view, mul) if mul is not None and mul.op_type == "Mul" else None
            if operand is not None and view.sole_consumer(mul.output[0]) is pre:
                _replace(view, [mul, pre, clip], "HardSigmoid", operand[0], alpha=operand[1], beta=shift)
                done.append(f"fused Clip(x*{operand[1]:g}+{shift:g},0,1) into HardSigmoid '{clip.output[0]}'")
    # x * HardSigmoid(x, 1/6, 1/2)
    for hs in [n for n in view.graph.node if n.op_type == "HardSigmoid"]:
        alpha, beta = float(view.attr(hs, "alpha", 0.2)), float(view.attr(hs, "beta", 0.5))
        if not (is_close(alpha, 1.0 / 6.0) and is_close(beta, 0.5)):
            continue
        mul = view.sole_consumer(hs.output[0])
        if not _multiplies(mul, hs.input[0], hs.output[0]):
            continue
        if swish_ok:
            _replace(view, [hs, mul], "HardSwish", hs.input[0])
            done.append(f"fused x*HardSigmoid(x) into HardSwish '{mul.output[0]}'")
        else:
            inner.add(hs.output[0])
    return done, inner
