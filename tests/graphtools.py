"""Helpers for the graph-rewrite tests: building small models and comparing float outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    """A float32 model; ``inputs``/``outputs`` are (name, shape) pairs (shape None: inferred)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        list(inits),
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset <= 17 else 9
    if opset < 13:
        m.ir_version = 6
    m = onnx.shape_inference.infer_shapes(m)  # fills the outputs' shapes left as None
    onnx.checker.check_model(m)
    return m


def run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, feeds
    )


def relative_error(reference: list[np.ndarray], test: list[np.ndarray]) -> float:
    """Largest |difference| over the largest |reference|, over all outputs and samples together."""
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in reference])
    out = np.concatenate([np.asarray(t, np.float64).ravel() for t in test])
    return float(np.max(np.abs(ref - out)) / np.max(np.abs(ref)))


def outputs_over(m: onnx.ModelProto, samples: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    return [o for feeds in samples for o in run(m, feeds)]


def op_types(m: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in m.graph.node]
