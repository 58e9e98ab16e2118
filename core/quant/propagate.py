"""Moving encodings across ops that do not change values (data movement), in either direction.

Used by float fallback (fill gaps in user-provided encodings) and by backends whose runtime needs the
same encoding on both sides of such ops.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from opendlc.encodings import EncodingSet, TensorEncoding

# Ops whose output values are a subset/rearrangement of input 0's values: an encoding of the input is
# exact for the output and vice versa ("math-invariant").
DATA_MOVEMENT = frozenset(
    {
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "MaxPool",
        "GlobalMaxPool",
        "Slice",
        "Gather",
        "GatherElements",
        "GatherND",
        "Split",
        "Tile",
        "Expand",
        "DepthToSpace",
        "SpaceToDepth",
        "Pad",
        "ReduceMax",
        "ReduceMin",
        "Resize",
        "Upsample",
        "TopK",
    }
)


# Ops whose output holds exactly input 0's values, only rearranged: the output's statistics are the
# input's, so calibration observes the input alone and the output takes its encoding.
SAME_VALUES = frozenset(
    {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "DepthToSpace", "SpaceToDepth"}
)


def same_values_outputs(model: onnx.ModelProto, tensors: Iterable[str]) -> set[str]:
    """The tensors among ``tensors`` that an op of :data:`SAME_VALUES` makes from another of them."""
    wanted = set(tensors)
    return {
        out
        for node in model.graph.node
        if node.op_type in SAME_VALUES and node.input and node.input[0] in wanted
        for out in node.output
        if out in wanted
    }


def _copy(enc: TensorEncoding, name: str, source: str) -> TensorEncoding:
    return TensorEncoding(
        name, "activation", list(enc.encodings), None, enc.dtype, enc.float_bitwidth, source
    )


def propagate(
    model: onnx.ModelProto,
    encodings: EncodingSet,
    tensors: Iterable[str],
    ops: frozenset[str] = DATA_MOVEMENT,
    *,
    backward: bool = True,
) -> int:
    """Give tensors in ``tensors`` without an encoding the encoding of their neighbour across ``ops``.

    Repeats until nothing changes; returns how many encodings were added.
    """
    wanted = set(tensors)
    added = 0
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if node.op_type not in ops or not node.input or not node.input[0]:
                continue
            src = node.input[0]
            for out in node.output:
                if (
                    out in wanted
                    and out not in encodings
                    and src in encodings
                    and encodings[src].kind == "activation"
                ):
                    encodings.add(_copy(encodings[src], out, "propagated"))
                    added += 1
                    changed = True
                elif backward and src in wanted and src not in encodings and out in encodings:
                    encodings.add(_copy(encodings[out], src, "propagated"))
                    added += 1
                    changed = True
    return added
