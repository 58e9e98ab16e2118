"""Small edits of ONNX graphs shared by several commands."""

from __future__ import annotations

import onnx

from opendlc.errors import UsageError


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs (old models list initializers among the inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


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
        return onnx.shape_inference.infer_shapes(out, data_prop=True)
    except Exception as e:
        raise UsageError(f"shapes {dims} do not fit the model: {str(e).splitlines()[0]}") from None
