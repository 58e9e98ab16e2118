"""Which tensors of a model carry which encodings.

Activations: the graph inputs and every float tensor a node computes.  Parameters: float constants that
feed an op's data inputs (weights, biases, constant operands); constants that describe shapes, indices or
attributes (Reshape's shape, Resize's scales, Clip's bounds, ...) stay float and get no encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import numpy_helper

from opendlc.model_edit import consumers, graph_inputs

# op type -> input indices whose constant values are quantized parameters
PARAM_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "Add": (0, 1),
    "Sub": (0, 1),
    "Mul": (0, 1),
    "Div": (0, 1),
    "Max": (0, 1),
    "Min": (0, 1),
    "PRelu": (1,),
    "LayerNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "BatchNormalization": (1, 2),
    "Concat": tuple(range(64)),
    "Where": (1, 2),
}
BIAS_OF: dict[str, int] = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}
WEIGHT_OF: dict[str, int] = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}

Role = Literal["weight", "bias", "other"]

# A Relu/Clip whose input comes only from one of these runs fused into it (QNN folds the activation into
# the op; onnxruntime's QDQ quantizer removes it likewise): the pre-activation tensor gets no encoding.
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip"})
FUSES_ACTIVATION = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul"})


def fused_preactivations(model: onnx.ModelProto) -> set[str]:
    """Tensors between an op and the Relu/Clip fused into it."""
    users = consumers(model)
    outputs = {o.name for o in model.graph.output}
    fused = set()
    for n in model.graph.node:
        if n.op_type not in FUSES_ACTIVATION or len(n.output) != 1:
            continue
        out = n.output[0]
        after = users.get(out, [])
        if out not in outputs and len(after) == 1 and after[0].op_type in FUSED_ACTIVATIONS:
            fused.add(out)
    return fused


@dataclass
class ParamUse:
    """A quantized constant and how it is used."""

    name: str
    role: Role
    op_type: str
    node: str
    # per-channel axis of a weight (output channels), or of a bias (0)
    channel_axis: int | None = None
    # for a bias: the activation entering the op and the op's weight (bias scale = their product)
    input_activation: str | None = None
    weight: str | None = None


@dataclass
class QuantPlan:
    activations: list[str] = field(default_factory=list)  # in topological order
    params: dict[str, ParamUse] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # constant values by name


def weight_channel_axis(node: onnx.NodeProto) -> int | None:
    """The output-channel axis of ``node``'s weight: Conv [M,C/g,k..] 0, ConvTranspose [C,M/g,k..] 1,
    Gemm B [N,K] 0 with transB else [K,N] 1, MatMul B [K,N] 1."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return -1
    return None


def make_plan(
    model: onnx.ModelProto, float_tensors: set[str], no_encoding: set[str] = frozenset()
) -> QuantPlan:
    """Plan for ``model``; ``float_tensors`` are the activations known to be float (from a session)."""
    plan = QuantPlan()
    no_encoding = set(no_encoding) | fused_preactivations(model)
    consts = {t.name: t for t in model.graph.initializer}
    for v in graph_inputs(model):
        if v.name in float_tensors and v.name not in no_encoding:
            plan.activations.append(v.name)
    for node in model.graph.node:
        for idx in PARAM_INPUTS.get(node.op_type, ()):
            if idx >= len(node.input) or node.input[idx] not in consts:
                continue
            name = node.input[idx]
            if consts[name].data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                continue
            if name in plan.params:
                continue  # shared constant: the first use decides its role
            plan.values[name] = numpy_helper.to_array(consts[name]).astype(np.float32)
            role: Role = "other"
            axis = None
            act = weight = None
            if WEIGHT_OF.get(node.op_type) == idx:
                role, axis = "weight", weight_channel_axis(node)
            elif BIAS_OF.get(node.op_type) == idx:
                role, axis = "bias", 0
                act = node.input[0]
                weight = node.input[WEIGHT_OF[node.op_type]]
            plan.params[name] = ParamUse(name, role, node.op_type, node.name, axis, act, weight)
        if node.op_type == "Constant":
            continue
        for out in node.output:
            if out and out in float_tensors and out not in no_encoding:
                plan.activations.append(out)
    return plan
