"""Graph normalisation: every rewrite keeps the float function (small models, then PP-OCR)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphtools import const, model, op_types, outputs_over, relative_error
from onnx import helper

from opendlc.graph.fold import fold_batch_norms
from opendlc.graph.normalize import normalize

RNG = np.random.default_rng(7)
X = ("x", [1, 4, 6, 6])


def rand(*shape, low=-1.0, high=1.0):
    return RNG.uniform(low, high, shape).astype(np.float32)


def samples(shape=(1, 4, 6, 6), n=3):
    return [{"x": RNG.standard_normal(shape).astype(np.float32) * 2} for _ in range(n)]


def bn(name, inp, out, c):
    inits = [
        const(f"{name}_g", rand(c, low=0.2, high=3)),
        const(f"{name}_b", rand(c)),
        const(f"{name}_m", rand(c)),
        const(f"{name}_v", rand(c, low=0.1, high=2)),
    ]
    node = helper.make_node(
        "BatchNormalization", [inp, f"{name}_g", f"{name}_b", f"{name}_m", f"{name}_v"], [out], epsilon=1e-3
    )
    return node, inits


def check(m, expect_absent=(), expect_present=(), shape=(1, 4, 6, 6)):
    """Normalise ``m``; the outputs agree within 1e-5 and the op types are as expected."""
    before = m.SerializeToString()
    result = normalize(m)
    assert m.SerializeToString() == before, "the input model was modified"
    data = samples(shape)
    err = relative_error(outputs_over(m, data), outputs_over(result.model, data))
    assert err < 1e-5, (err, result.report)
    ops = op_types(result.model)
    for op in expect_absent:
        assert op not in ops, (op, ops, result.report)
    for op in expect_present:
        assert op in ops, (op, ops, result.report)
    onnx.checker.check_model(result.model, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in result.model.graph.node)
    return result


# Constants and opset -----------------------------------------------------------------------------
def test_constant_nodes_and_static_shape_subgraphs_are_folded():
    shape_const = helper.make_node("Constant", [], ["minus1"], value=helper.make_tensor("v", 7, [1], [-1]))
    w_const = helper.make_node("Constant", [], ["w"], value=onnx.numpy_helper.from_array(rand(4, 4, 1, 1)))
    nodes = [
        shape_const,
        w_const,
        helper.make_node("Conv", ["x", "w"], ["y"]),
        helper.make_node("Shape", ["y"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["y", "target"], ["out"]),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array(0, np.int64), "zero"),
        onnx.numpy_helper.from_array(np.array([0], np.int64), "axes"),
    ]
    m = model(nodes, [X], [("out", None)], inits)
    result = check(m, expect_absent=("Constant", "Shape", "Gather", "Unsqueeze", "Concat"))
    assert "w" in {t.name for t in result.model.graph.initializer}
    assert any("Constant" in line for line in result.report)


def test_old_opset_is_raised_to_17_and_checked():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"]),
        helper.make_node("Clip", ["y"], ["z"], min=0.0, max=6.0),  # opset < 11: bounds as attributes
        helper.make_node("Softmax", ["z"], ["out"], axis=1),  # opset < 13: 2-D coercion semantics
    ]
    m = model(nodes, [X], [("out", None)], [const("w", rand(4, 4, 1, 1))], opset=10)
    m.ir_version = 5
    result = check(m)
    assert next(o.version for o in result.model.opset_import if o.domain == "") == 17
    assert any("opset from 10 to 17" in line for line in result.report)


# BatchNormalization --------------------------------------------------------------------------------
@pytest.mark.parametrize("group,bias", [(1, True), (1, False), (2, True), (4, False)])
def test_batch_norm_folds_into_conv(group, bias):
    inits = [const("w", rand(8, 4 // group, 3, 3))] + ([const("b", rand(8))] if bias else [])
    conv = helper.make_node(
        "Conv", ["x", "w"] + (["b"] if bias else []), ["y"], pads=[1, 1, 1, 1], group=group
    )
    norm, bn_inits = bn("bn", "y", "out", 8)
    result = check(
        model([conv, norm], [X], [("out", None)], inits + bn_inits), expect_absent=("BatchNormalization",)
    )
    assert result.model.graph.output[0].name == "out"


@pytest.mark.parametrize("group", [1, 2])
def test_batch_norm_folds_into_conv_transpose(group):
    conv = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], group=group)
    norm, bn_inits = bn("bn", "y", "out", 6)
    inits = [const("w", rand(4, 6 // group, 2, 2)), const("b", rand(6))] + bn_inits
    check(model([conv, norm], [X], [("out", None)], inits), expect_absent=("BatchNormalization",))


@pytest.mark.parametrize("trans_b,c_shape", [(0, (5,)), (1, (5,)), (0, (3, 1)), (1, None)])
def test_batch_norm_folds_into_gemm(trans_b, c_shape):
    w = rand(5, 6) if trans_b else rand(6, 5)
    ins = ["x", "w"] + (["c"] if c_shape else [])
    gemm = helper.make_node("Gemm", ins, ["y"], transB=trans_b, alpha=0.7, beta=1.3)
    norm, bn_inits = bn("bn", "y", "out", 5)
    inits = [const("w", w)] + ([const("c", rand(*c_shape))] if c_shape else []) + bn_inits
    check(
        model([gemm, norm], [("x", [3, 6])], [("out", None)], inits),
        expect_absent=("BatchNormalization",),
        shape=(3, 6),
    )


@pytest.mark.parametrize("with_add", [False, True])
def test_batch_norm_folds_into_2d_matmul(with_add):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"])]
    inits = [const("w", rand(6, 5))]
    if with_add:
        nodes.append(helper.make_node("Add", ["c", "mm"], ["y"]))
        inits.append(const("c", rand(5)))
    norm, bn_inits = bn("bn", "y" if with_add else "mm", "out", 5)
    m = model(nodes + [norm], [("x", [3, 6])], [("out", None)], inits + bn_inits)
    check(m, expect_absent=("BatchNormalization",), shape=(3, 6))


def test_batch_norm_after_3d_matmul_is_kept():
    # BN normalises axis 1 (here the sequence axis), not the MatMul's columns: not foldable
    norm, bn_inits = bn("bn", "y", "out", 3)
    m = model(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), norm],
        [("x", [2, 3, 6])],
        [("out", None)],
        [const("w", rand(6, 5))] + bn_inits,
    )
    check(m, expect_present=("BatchNormalization",), shape=(2, 3, 6))


def test_fold_batch_norms_keeps_shared_weights_and_graph_outputs():
    # two convs share one weight; only one is followed by BN.  The BN's input is also not read twice.
    norm, bn_inits = bn("bn", "y1", "out1", 4)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y1"]),
        norm,
        helper.make_node("Conv", ["x", "w"], ["out2"]),
        helper.make_node("Conv", ["x", "w"], ["y3"]),
        bn("bn3", "y3", "out3", 4)[0],
    ]
    inits = [const("w", rand(4, 4, 1, 1))] + bn_inits + bn("bn3", "y3", "out3", 4)[1]
    m = model(nodes, [X], [("out1", None), ("out2", None), ("y3", None), ("out3", None)], inits)
    folded = fold_batch_norms(m)
    data = samples()
    assert relative_error(outputs_over(m, data), outputs_over(folded, data)) < 1e-5
    assert op_types(folded).count("BatchNormalization") == 1  # the one whose input is a graph output


# Per-channel affine after and before a Conv ----------------------------------------------------------
@pytest.mark.parametrize(
    "op,value,const_first",
    [
        ("Mul", np.float32(1.7), False),
        (
            "Mul",
            np.full((1, 8, 1, 1), 0.5, np.float32) + np.arange(8, dtype=np.float32).reshape(1, 8, 1, 1),
            True,
        ),
        ("Add", np.arange(8, dtype=np.float32).reshape(8, 1, 1), True),
        ("Div", np.float32(6.0), False),
        ("Sub", np.arange(8, dtype=np.float32).reshape(1, 8, 1, 1), False),
    ],
)
def test_per_channel_affine_after_conv_is_folded(op, value, const_first):
    ins = ["k", "y"] if const_first else ["y", "k"]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node(op, ins, ["out"]),
    ]
    inits = [const("w", rand(8, 4, 3, 3)), const("b", rand(8)), const("k", value)]
    check(model(nodes, [X], [("out", None)], inits), expect_absent=(op,))


def test_spatially_varying_constant_is_not_folded():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Mul", ["y", "k"], ["out"])]
    inits = [const("w", rand(8, 4, 1, 1)), const("k", rand(1, 1, 6, 1))]
    check(model(nodes, [X], [("out", None)], inits), expect_present=("Mul",))


@pytest.mark.parametrize(
    "op,pads,folded", [("Mul", 1, True), ("Div", 1, True), ("Add", 0, True), ("Add", 1, False)]
)
def test_per_channel_affine_before_conv(op, pads, folded):
    # x*a before a padded Conv is exact (padded zeros stay zero); x+c only when nothing is padded
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node(op, ["r", "k"], ["s"]),
        helper.make_node("Conv", ["s", "w", "b"], ["out"], pads=[pads] * 4, group=2),
    ]
    inits = [const("w", rand(6, 2, 3, 3)), const("b", rand(6)), const("k", rand(1, 4, 1, 1, low=0.5, high=2))]
    m = model(nodes, [X], [("out", None)], inits)
    check(m, expect_absent=(op,) if folded else (), expect_present=() if folded else (op,))


# Activations ------------------------------------------------------------------------------------------
def _hardswish_variant(kind: str):
    k = lambda name, v: const(name, np.float32(v))  # noqa: E731
    inits = [k("three", 3), k("zero", 0), k("six", 6), k("sixth", 1 / 6)]
    if kind == "mul-then-div":  # x * Clip(x+3, 0, 6) / 6
        nodes = [
            helper.make_node("Add", ["x", "three"], ["a"]),
            helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
            helper.make_node("Mul", ["x", "c"], ["m"]),
            helper.make_node("Div", ["m", "six"], ["out"]),
        ]
    elif kind == "mul-reciprocal":  # (Clip(3+x, 0, 6) * x) * 1/6
        nodes = [
            helper.make_node("Add", ["three", "x"], ["a"]),
            helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
            helper.make_node("Mul", ["c", "x"], ["m"]),
            helper.make_node("Mul", ["m", "sixth"], ["out"]),
        ]
    elif kind == "hardsigmoid-decomposed":  # x * (Clip(x+3, 0, 6) / 6)
        nodes = [
            helper.make_node("Add", ["x", "three"], ["a"]),
            helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
            helper.make_node("Div", ["c", "six"], ["h"]),
            helper.make_node("Mul", ["x", "h"], ["out"]),
        ]
    else:  # x * HardSigmoid(x, 1/6, 0.5)
        nodes = [
            helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5),
            helper.make_node("Mul", ["h", "x"], ["out"]),
        ]
    return model(nodes, [X], [("out", None)], inits)


@pytest.mark.parametrize(
    "kind", ["mul-then-div", "mul-reciprocal", "hardsigmoid-decomposed", "hardsigmoid-node"]
)
def test_hardswish_variants_become_one_node(kind):
    result = check(_hardswish_variant(kind), expect_absent=("Clip", "Div", "HardSigmoid", "Mul"))
    assert op_types(result.model) == ["HardSwish"]
    assert result.no_encoding == set()


def test_hardswish_is_left_where_the_opset_has_none_and_its_inside_gets_no_encoding():
    m = _hardswish_variant("mul-then-div")
    m.opset_import[0].version = 13
    result = normalize(m, target_opset=13)
    assert "HardSwish" not in op_types(result.model)
    assert result.no_encoding == {"a", "c", "m"}


@pytest.mark.parametrize(
    "nodes,alpha,beta",
    [
        (  # Clip(x + 3, 0, 6) / 6
            [("Add", ["x", "three"], "a"), ("Clip", ["a", "zero", "six"], "c"), ("Div", ["c", "six"], "out")],
            1 / 6,
            0.5,
        ),
        (  # Clip(x * 0.2 + 0.5, 0, 1): Paddle's hard_sigmoid
            [("Mul", ["x", "p2"], "a"), ("Add", ["a", "half"], "b"), ("Clip", ["b", "zero", "one"], "out")],
            0.2,
            0.5,
        ),
    ],
)
def test_hardsigmoid_decompositions_become_one_node(nodes, alpha, beta):
    k = lambda name, v: const(name, np.float32(v))  # noqa: E731
    inits = [k("three", 3), k("zero", 0), k("six", 6), k("one", 1), k("p2", 0.2), k("half", 0.5)]
    m = model([helper.make_node(op, i, [o]) for op, i, o in nodes], [X], [("out", None)], inits)
    result = check(m)
    assert op_types(result.model) == ["HardSigmoid"]
    node = result.model.graph.node[0]
    got = {a.name: a.f for a in node.attribute}
    assert got["alpha"] == pytest.approx(alpha) and got["beta"] == pytest.approx(beta)


def test_x_times_hardsigmoid_with_another_alpha_is_not_hardswish():
    nodes = [
        helper.make_node("HardSigmoid", ["x"], ["h"], alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["x", "h"], ["out"]),
    ]
    result = check(model(nodes, [X], [("out", None)]), expect_absent=("HardSwish",))
    assert op_types(result.model) == ["HardSigmoid", "Mul"]


def test_pattern_whose_inside_is_a_graph_output_is_left_alone():
    m = _hardswish_variant("mul-then-div")
    m.graph.output.append(helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, None))
    result = check(m)
    assert "HardSwish" not in op_types(result.model)


def with_outputs(m: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for name in names:
        out.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out


# Real models ------------------------------------------------------------------------------------------
@pytest.mark.real_models
@pytest.mark.parametrize("name", ["cls", "rec", "det"])
def test_ppocr_float_outputs_are_kept(ppocr, name):
    import realmodels

    from opendlc.model_edit import set_input_shapes

    shape = realmodels.input_shape(name)
    m = set_input_shapes(onnx.load(ppocr(name)), {"x": list(shape)})
    result = normalize(m)
    data = [{"x": x} for x in realmodels.image_crops(shape, 3, seed=11)]
    # The detector ends in a Sigmoid that these text-free crops saturate near 0 (outputs below 1e-4):
    # relative to such outputs, even onnxruntime's own optimisations differ by 1e-3.  So the logits
    # (the Sigmoid's input, a tensor both models have) are compared too, and outputs relative to
    # max(|reference|, 0.01).
    last = result.model.graph.node[-1]
    probes = [last.input[0]] if last.op_type == "Sigmoid" else []
    before, after = with_outputs(m, probes), with_outputs(result.model, probes)
    ref, got = outputs_over(before, data), outputs_over(after, data)
    count = len(before.graph.output)
    for k in range(count):
        r = np.concatenate([x.ravel() for x in ref[k::count]]).astype(np.float64)
        g = np.concatenate([x.ravel() for x in got[k::count]]).astype(np.float64)
        err = np.max(np.abs(r - g)) / max(np.max(np.abs(r)), 0.01)
        assert err < 1e-4, (name, before.graph.output[k].name, err)
    ops = op_types(result.model)
    assert "Constant" not in ops and "BatchNormalization" not in ops and "Clip" not in ops, ops
    assert ops.count("HardSwish") == {"cls": 18, "rec": 28, "det": 24}[name]
    assert next(o.version for o in result.model.opset_import if o.domain == "") == 17
    assert all(n.domain == "" for n in result.model.graph.node)


@pytest.mark.real_models
def test_normalized_cls_runs_on_htp_without_cpu_fallback(ppocr):
    """QNN's HTP (emulated on the CPU, fp16) takes every op of the normalised classifier."""
    import realmodels

    ort = pytest.importorskip("onnxruntime")
    oq = pytest.importorskip("onnxruntime_qnn")
    from opendlc.model_edit import set_input_shapes

    shape = realmodels.input_shape("cls")
    result = normalize(set_input_shapes(onnx.load(ppocr("cls")), {"x": list(shape)}))
    try:
        ort.register_execution_provider_library("QNNExecutionProvider", oq.get_library_path())
    except Exception:  # already registered in this process
        pass
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_provider_for_devices(
        devices[:1],
        {"backend_path": oq.get_qnn_htp_path(), "soc_model": "57", "enable_htp_fp16_precision": "1"},
    )
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    session = ort.InferenceSession(result.model.SerializeToString(), so)
    x = realmodels.image_crops(shape, 1, seed=3)[0]
    htp = session.run(None, {"x": x})[0]
    cpu = outputs_over(result.model, [{"x": x}])[0]
    assert np.max(np.abs(htp - cpu)) < 0.02  # fp16 arithmetic on a softmax output
