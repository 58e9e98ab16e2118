"""Small edits of ONNX graphs shared by several commands."""

from __future__ import annotations

import logging
import os
import tempfile

import onnx

from opendlc.errors import UsageError

log = logging.getLogger("opendlc.model_edit")


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs (old models list initializers among the inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Every tensor's readers: the nodes taking it as an input, in graph order."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def inferred_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """The type (with the shape, where known) of every tensor onnx's shape inference can tell: the
    graph's inputs, outputs and value_info after inference.  Best effort: when inference fails (e.g. a
    model beyond protobuf's 2 GB), what the model itself declares."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    g = inferred.graph
    return {v.name: v.type for v in (*g.value_info, *g.input, *g.output)}


def set_input_shapes(model: onnx.ModelProto, dims: dict[str, list[int]]) -> onnx.ModelProto:
    """A copy of ``model`` with the named inputs' shapes fixed, and shapes re-inferred."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inputs = {v.name: v for v in graph_inputs(out)}
    for name, shape in dims.items():
        if name not in inputs:
            raise UsageError(f"the model has no input '{name}' (inputs: {', '.join(inputs)})")
        t = inputs[name].type.tensor_type
        if len(t.shape.dim) and len(t.shape.dim) != len(shape):
            raise UsageError(f"input '{name}' has rank {len(t.shape.dim)}, not {len(shape)}")
        del t.shape.dim[:]
        for d in shape:
            t.shape.dim.add().dim_value = d
    # stale intermediate shapes would contradict the new input shapes
    del out.graph.value_info[:]
    for o in out.graph.output:
        for d in o.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                d.ClearField("dim_value")
    try:
        out = onnx.shape_inference.infer_shapes(out, data_prop=True)
    except Exception as e:
        raise UsageError(f"shapes {dims} do not fit the model: {str(e).splitlines()[0]}") from None
    if not _static_outputs(out):
        _output_shapes_from_onnxruntime(out)
    return out


def _static_outputs(model: onnx.ModelProto) -> bool:
    return all(
        d.HasField("dim_value") and d.dim_value > 0
        for o in model.graph.output
        for d in o.type.tensor_type.shape.dim
    ) and all(o.type.tensor_type.HasField("shape") for o in model.graph.output)


def _output_shapes_from_onnxruntime(model: onnx.ModelProto) -> None:
    """Fill the output dimensions ONNX's shape inference left unknown with ONNX Runtime's.

    ONNX's inference stops at a Reshape whose target shape is computed (PP-OCR's models); ONNX Runtime
    folds such computations when it loads a model, so the model it would save knows the output shapes.
    This is static inference, never a run on data, so data-dependent dimensions stay unknown.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = os.path.join(d, "optimized.onnx")
        so.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            optimized = onnx.load(so.optimized_model_filepath, load_external_data=False)
        except Exception as e:  # a model ONNX Runtime cannot load keeps the shapes ONNX found
            log.debug("output shapes: ONNX Runtime could not load the model (%s)", e)
            return
    known = {o.name: o.type.tensor_type.shape for o in optimized.graph.output}
    for o in model.graph.output:
        theirs = known.get(o.name)
        if theirs is None:
            continue
        ours = o.type.tensor_type.shape
        if not o.type.tensor_type.HasField("shape") or len(ours.dim) == 0:
            ours.CopyFrom(theirs)
            continue
        if len(ours.dim) != len(theirs.dim):
            continue
        for mine, other in zip(ours.dim, theirs.dim, strict=True):
            if not (mine.HasField("dim_value") and mine.dim_value > 0) and other.dim_value > 0:
                mine.dim_value = other.dim_value
