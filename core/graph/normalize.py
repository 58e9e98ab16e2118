"""Normalising a float ONNX model before quantization, as the SDK's converter does for its target.

:func:`normalize` returns a rewritten copy that computes the same function:

1. the default-domain opset is raised to 17 (at least 13, where DequantizeLinear has ``axis`` for
   per-channel encodings) with ``onnx.version_converter``, and the result is checked;
2. onnxruntime's basic offline optimizer folds ``Constant`` nodes into initializers and constant
   subgraphs (Shape -> Gather -> Concat -> Reshape on static shapes) into constants, removes no-ops,
   and fuses a few exact patterns (MatMul+Add -> Gemm, LayerNormalization at opset 17).  Its own
   Conv+BN/Mul/Add fusions are switched off: the passes below do those for more op types;
3. BatchNormalization and per-channel Mul/Div/Add/Sub by constants are folded into the
   Conv/ConvTranspose/Gemm/MatMul next to them (:mod:`opendlc.graph.fold`);
4. decomposed hard-swish / hard-sigmoid become one node (:mod:`opendlc.graph.activations`).

The result holds only standard ONNX ops.  When every input has a static shape, the rewritten model is
run once against the original on a random input, and a difference beyond rounding is an error.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

from opendlc.errors import OpendlcError
from opendlc.graph.activations import fuse_hard_activations_in
from opendlc.graph.fold import fold_batch_norms_in, fold_input_affine_in, fold_output_affine_in, tensor_ranks
from opendlc.graph.view import GraphView

TARGET_OPSET = 17
MIN_OPSET = 13  # per-channel DequantizeLinear (``axis``) needs 13
VERIFY_TOLERANCE = 1e-3  # relative to the output's largest magnitude; rounding is far below this

# onnxruntime fusions that the passes of this module replace (they cover more op types and report)
_ORT_DISABLED = ["ConvBNFusion", "ConvAddFusion", "ConvMulFusion"]
# fusions that emit LayerNormalization, a default-domain op only from opset 17 on
_ORT_LAYERNORM = ["LayerNormFusion", "SimplifiedLayerNormFusion"]


@dataclass
class Normalized:
    """The normalised model and what the quantizer must know about it."""

    model: onnx.ModelProto
    no_encoding: set[str] = field(default_factory=set)  # tensors inside a pattern the backend runs as one op
    report: list[str] = field(default_factory=list)  # what was done, one line each (for --verbose)


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def normalize(model: onnx.ModelProto, *, target_opset: int = TARGET_OPSET, verify: bool = True) -> Normalized:
    """Normalise a copy of ``model`` (which is left untouched); see the module's docstring."""
    report: list[str] = []
    out = raise_opset(model, target_opset, report)
    out = optimize_with_onnxruntime(out, report)
    opset = default_opset(out)
    view = GraphView(out)
    counts: dict[str, int] = {}
    no_encoding: set[str] = set()
    for _ in range(10):  # each pass can expose work for another; a few rounds reach the fixed point
        # activations first: folding a pattern's trailing "/ 6" into the next Conv would hide it
        lines, inner = fuse_hard_activations_in(view, opset)
        no_encoding |= inner
        ranks = tensor_ranks(out)
        lines += fold_batch_norms_in(view, ranks)
        lines += fold_output_affine_in(view, ranks)
        lines += fold_input_affine_in(view)
        for line in lines:
            kind = line.split(" '")[0]
            counts[kind] = counts.get(kind, 0) + 1
        if not lines:
            break
        view.prune()
    report += [f"{n} x {kind}" for kind, n in counts.items()]
    view.prune()
    out = finish(out, report)
    alive = {t for n in out.graph.node for t in n.output}
    no_encoding &= alive
    if no_encoding:
        report.append(f"{len(no_encoding)} tensors inside unfused activation patterns get no encoding")
    if verify:
        check_same_function(model, out, report)
    return Normalized(out, no_encoding, report)


def raise_opset(model: onnx.ModelProto, target: int, report: list[str]) -> onnx.ModelProto:
    """A copy at the ``target`` opset when the model is older (else an unchanged copy)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    current = default_opset(out)
    if current >= target or current == 0:
        return out
    errors = []
    for version in range(target, max(current, MIN_OPSET - 1), -1):
        try:
            converted = version_converter.convert_version(out, version)
            converted.ir_version = max(
                converted.ir_version,
                onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", version)]),
            )
            onnx.checker.check_model(converted, full_check=True)
        except Exception as e:  # the converter has no adapter for some op, or its result is invalid
            errors.append(f"opset {version}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        report.append(f"raised the opset from {current} to {version}")
        return converted
    if current >= MIN_OPSET:
        report.append(f"kept opset {current}: {errors[0]}")
        return out
    raise OpendlcError(f"cannot raise the model's opset {current} to {MIN_OPSET} or more ({errors[-1]})")


def optimize_with_onnxruntime(model: onnx.ModelProto, report: list[str]) -> onnx.ModelProto:
    """Constant folding and exact clean-ups by onnxruntime's basic (hardware-independent) level."""
    import onnxruntime as ort

    before = len(model.graph.node)
    disabled = list(_ORT_DISABLED) + (_ORT_LAYERNORM if default_opset(model) < 17 else [])
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
        onnx.save(model, src)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = dst
        so.log_severity_level = 3
        try:
            ort.InferenceSession(src, so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
            optimized = onnx.load(dst)
        except Exception as e:  # e.g. custom ops onnxruntime does not know: fold Constant nodes only
            report.append(
                f"onnxruntime could not optimise the model ({str(e).splitlines()[0][:200]}); "
                "folded Constant nodes only"
            )
            return constants_to_initializers(model)
    domains_in = {n.domain for n in model.graph.node}
    foreign = {n.domain for n in optimized.graph.node} - domains_in - {"", "ai.onnx"}
    if foreign:  # never hand a non-standard op to the backend
        raise OpendlcError(f"onnxruntime's basic optimizer introduced ops of domain(s) {sorted(foreign)}")
    kinds = {}
    for n in model.graph.node:
        kinds[n.op_type] = kinds.get(n.op_type, 0) + 1
    report.append(
        f"onnxruntime basic optimizer: {before} -> {len(optimized.graph.node)} nodes "
        f"({kinds.get('Constant', 0)} Constant nodes folded into initializers, constant subgraphs folded)"
    )
    return optimized


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every tensor-valued ``Constant`` node turned into an initializer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = []
    for node in out.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            attr = node.attribute[0]
            value = None
            if attr.name == "value":
                value = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_int"):
                value = np.array(
                    onnx.helper.get_attribute_value(attr),
                    dtype=np.float32 if attr.name == "value_float" else np.int64,
                )
            elif attr.name in ("value_floats", "value_ints"):
                value = np.array(
                    onnx.helper.get_attribute_value(attr),
                    dtype=np.float32 if attr.name == "value_floats" else np.int64,
                )
            if value is not None:
                out.graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
                continue
        keep.append(node)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def finish(model: onnx.ModelProto, report: list[str]) -> onnx.ModelProto:
    """Drop unused opset imports, re-infer shapes, and check the model."""
    used = {n.domain for n in model.graph.node} | {""}
    imports = [o for o in model.opset_import if o.domain in used or (o.domain == "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(imports)
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        onnx.checker.check_model(model)
    except Exception as e:
        raise OpendlcError(f"the normalised model does not check: {str(e).splitlines()[0]}") from None
    return model


def _static_inputs(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], np.dtype]] | None:
    from opendlc.model_edit import graph_inputs

    specs = {}
    for v in graph_inputs(model):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if any(d <= 0 for d in dims) or not np.issubdtype(dtype, np.floating):
            return None
        specs[v.name] = (tuple(dims), dtype)
    return specs


def check_same_function(original: onnx.ModelProto, rewritten: onnx.ModelProto, report: list[str]) -> None:
    """Run both models on one random input; a difference well beyond rounding is an error.

    Rounding noise differs from model to model (a steep sigmoid amplifies it), so the bound also
    scales with the difference onnxruntime's own optimizations make on the original model.
    """
    import onnxruntime as ort

    specs = _static_inputs(original)
    if specs is None:
        report.append("not verified numerically (an input has a dynamic shape or is not float)")
        return
    rng = np.random.default_rng(0)
    feeds = {name: rng.uniform(-1, 1, shape).astype(dtype) for name, (shape, dtype) in specs.items()}

    def run(m: onnx.ModelProto, level: ort.GraphOptimizationLevel) -> list[np.ndarray]:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = level
        session = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return [np.asarray(o, np.float64) for o in session.run(None, feeds)]

    try:
        reference = run(original, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        noise = _relative_errors(reference, run(original, ort.GraphOptimizationLevel.ORT_ENABLE_ALL))
    except Exception:
        report.append("not verified numerically (onnxruntime cannot run the original model)")
        return
    errors = _relative_errors(reference, run(rewritten, ort.GraphOptimizationLevel.ORT_DISABLE_ALL))
    for name, err, floor in zip([o.name for o in rewritten.graph.output], errors, noise, strict=True):
        if not np.isfinite(err) or err > max(VERIFY_TOLERANCE, 100 * floor):
            raise OpendlcError(
                f"graph normalisation changed output '{name}' (relative error {err:.2e}): a bug"
            )
    report.append(
        f"verified on a random input: largest relative output difference {max(errors, default=0):.1e}"
    )


def _relative_errors(reference: list[np.ndarray], test: list[np.ndarray]) -> list[float]:
    out = []
    for a, b in zip(reference, test, strict=True):
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        out.append(float(np.max(np.abs(a - b))) / max(scale, 1e-12) if a.size else 0.0)
    return out
