"""Small ONNX models the tests build."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(
    rng: np.random.Generator, name: str, shape: tuple[int, ...], scale: float = 0.5
) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)


def single_io_model(
    nodes: list[onnx.NodeProto],
    name: str,
    x_shape: list[int],
    y_shape: list[int],
    inits: list[onnx.TensorProto],
    opset: int = 17,
) -> onnx.ModelProto:
    """A checked model of ``nodes`` reading float ``x`` and giving float ``y``."""
    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def conv_net(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv+Relu -> Conv (+ a side Conv) -> Add -> Sigmoid -> Mul -> Reshape -> y[1,256]."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w3"], ["x2"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x2"], ["a"]),
        helper.make_node("Sigmoid", ["a"], ["s"]),
        helper.make_node("Mul", ["a", "s"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["y"]),
    ]
    inits = [
        _init(rng, "w1", (4, 3, 3, 3)),
        _init(rng, "b1", (4,)),
        _init(rng, "w2", (4, 4, 3, 3)),
        _init(rng, "b2", (4,)),
        _init(rng, "w3", (4, 3, 3, 3)),
        numpy_helper.from_array(np.array([1, 256], dtype=np.int64), "shape"),
    ]
    return single_io_model(nodes, "conv_net", [1, 3, 8, 8], [1, 256], inits, opset)


def dead_channel_conv(bias0: float = 0.5, dead: float = 1e-16) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(w, b) -> y[1,4,8,8]; output channel 0's weights are about zero (``dead`` x a
    normal draw) and its bias is ``bias0``, so that channel outputs about its bias.  Trained networks
    have such channels (PP-OCR rec and det do); per-channel weight scales make them tiny."""
    rng = np.random.default_rng(4)
    w = (rng.normal(size=(4, 3, 3, 3)) * 0.3).astype(np.float32)
    w[0] = rng.normal(size=(3, 3, 3)).astype(np.float32) * dead
    b = np.array([bias0, -0.2, 0.1, 0.3], np.float32)
    return single_io_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
        "dead_channel_conv",
        [1, 3, 8, 8],
        [1, 4, 8, 8],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )


def skewed_weight_conv() -> onnx.ModelProto:
    """x[1,256,6,6] -> Conv 1x1 (w: mostly small, one weight 3.0) -> y[1,8,6,6].

    Per-tensor asymmetric 8-bit weights put the zero point near 20, so the big weight lies about 230
    steps above it: more than int8 holds."""
    rng = np.random.default_rng(6)
    w = (rng.normal(size=(8, 256, 1, 1)) * 0.1).astype(np.float32)
    w[1, 0, 0, 0] = 3.0
    return single_io_model(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "skewed_weight_conv",
        [1, 256, 6, 6],
        [1, 8, 6, 6],
        [numpy_helper.from_array(w, "w")],
    )


def samples(n: int, seed: int = 1, shape: tuple[int, ...] = (1, 3, 8, 8), name: str = "x") -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{name: rng.normal(size=shape).astype(np.float32)} for _ in range(n)]
