"""Building blocks for backend operator constraints (used by backend plugins' ``constrain_encodings``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import onnx

from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.model_edit import consumers as consumers  # (backend plugins read it from here)
from opendlc.schemas import Encoding

log = logging.getLogger("opendlc.quant.constraints")


def fixed_output(
    model: onnx.ModelProto, encodings: EncodingSet, fixed: dict[str, Callable[[int], Encoding | None]]
) -> int:
    """Set the output encoding of every node whose op type is in ``fixed`` (op -> bitwidth -> Encoding,
    or None where that bitwidth keeps its calibrated range)."""
    changed = 0
    for node in model.graph.node:
        make = fixed.get(node.op_type)
        out = node.output[0] if node.output else ""
        if make is None or out not in encodings or encodings[out].dtype != "int":
            continue
        current = encodings[out]
        enc = make(current.encodings[0].bitwidth)
        if enc is not None and current.encodings != [enc]:
            encodings.add(TensorEncoding(out, "activation", [enc], None, "int", None, "constraint"))
            changed += 1
    return changed


def share_input_encoding(model: onnx.ModelProto, encodings: EncodingSet, ops: frozenset[str]) -> int:
    """Outputs of ``ops`` take the encoding of input 0 (no requantization inside data movement).

    Nodes are visited in graph order, so chains of such ops share one encoding.
    """
    changed = 0
    for node in model.graph.node:
        if node.op_type not in ops or not node.input or node.input[0] not in encodings:
            continue
        src = encodings[node.input[0]]
        if src.kind != "activation" or src.dtype != "int":
            continue
        for out in node.output:
            if (
                out in encodings
                and encodings[out].dtype == "int"
                and encodings[out].encodings != src.encodings
            ):
                encodings.add(
                    TensorEncoding(out, "activation", list(src.encodings), None, "int", None, "constraint")
                )
                changed += 1
    return changed


def share_concat_encoding(model: onnx.ModelProto, encodings: EncodingSet) -> int:
    """Concat inputs used only by the Concat take its output encoding, so it concatenates without
    requantizing."""
    users = consumers(model)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Concat" or node.output[0] not in encodings:
            continue
        out = encodings[node.output[0]]
        if out.dtype != "int":
            continue
        for i in node.input:
            if (
                i in encodings
                and encodings[i].kind == "activation"
                and len(users.get(i, [])) == 1
                and encodings[i].encodings != out.encodings
            ):
                encodings.add(
                    TensorEncoding(i, "activation", list(out.encodings), None, "int", None, "constraint")
                )
                changed += 1
    return changed


def symmetric_per_channel_weights(encodings: EncodingSet, only: str | None = None) -> int:
    """Per-channel weight encodings made symmetric (signed, offset 0) over each channel's absolute range,
    for runtimes that only support symmetric per-channel weights (with ``only``, that weight's alone)."""
    changed = 0
    params = encodings.of_kind("param") if only is None else [encodings[only]] if only in encodings else []
    for t in params:
        if t.kind != "param":
            continue
        if (
            t.dtype != "int"
            or len(t.encodings) < 2
            or all(e.is_symmetric and e.offset == 0 for e in t.encodings)
        ):
            continue
        new = []
        for e in t.encodings:
            qmax = 2 ** (e.bitwidth - 1) - 1
            absmax = max(abs(e.min), abs(e.max))
            scale = absmax / qmax if absmax > 0 else e.scale
            new.append(Encoding(e.bitwidth, scale, 0, -(qmax + 1) * scale, qmax * scale, True, True))
        encodings.add(TensorEncoding(t.name, "param", new, t.axis, "int", None, "constraint"))
        changed += 1
    return changed
