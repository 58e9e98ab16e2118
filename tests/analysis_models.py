"""A small model with one deliberately sensitive activation, and helpers for the analysis tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SENSITIVE = "spiky"


def spiky_net(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv+Relu -> Conv -> cube (``spiky``) -> Tanh -> Conv -> Reshape -> y[1,256].

    ``spiky`` is the cube of a roughly Gaussian tensor: a few huge values set its 8-bit range, so the
    step is far coarser than the small values Tanh passes on (it saturates the huge ones).  Quantizing
    ``spiky`` alone ruins the output; every other tensor is harmless.
    """
    rng = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Mul", ["c2", "c2"], ["sq"], name="square"),
        helper.make_node("Mul", ["sq", "c2"], [SENSITIVE], name="cube"),
        helper.make_node("Tanh", [SENSITIVE], ["t"], name="saturate"),
        helper.make_node("Conv", ["t", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
        helper.make_node("Reshape", ["c3", "shape"], ["y"], name="flatten"),
    ]
    inits = [
        init("w1", (4, 3, 3, 3), 0.5),
        init("b1", (4,), 0.5),
        init("w2", (4, 4, 3, 3), 0.2),
        init("b2", (4,), 0.1),
        init("w3", (4, 4, 3, 3), 0.5),
        init("b3", (4,), 0.5),
        numpy_helper.from_array(np.array([1, 256], dtype=np.int64), "shape"),
    ]
    g = helper.make_graph(
        nodes,
        "spiky_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def write_input_list(folder: Path, samples: list[dict[str, np.ndarray]], name: str = "list.txt") -> Path:
    """Raw float32 files of ``samples`` and an input list naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, s in enumerate(samples):
        raw = folder / f"{i:03d}.raw"
        s["x"].astype(np.float32).tofile(raw)
        lines.append(raw.name)
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path
