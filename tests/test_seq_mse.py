"""seq_mse: weight encodings chosen by each layer's output error."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import sdk_quant_models as sq
import tinymodels
from onnx import TensorProto, helper, numpy_helper

from opendlc import container as dlc
from opendlc.algorithms import CalibrationContext, Phase
from opendlc.encodings import EncodingSet
from opendlc.errors import UsageError
from opendlc.plugin_manager import get_plugin_manager
from opendlc.quant import seq_mse as S
from opendlc.quant.api import quantize
from opendlc.quant.calibrate import with_outputs
from opendlc.quant.export import dequantized_values, to_qdq_model
from opendlc.quant.options import QuantizerOptions


def _one_node(op: str, w: np.ndarray, attrs: dict, x_shape: list[int]) -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"], **attrs)],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w.astype(np.float32), "w")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def _output(op: str, w: np.ndarray, attrs: dict, x: np.ndarray) -> np.ndarray:
    return _run(_one_node(op, w, attrs, list(x.shape)), {"x": x})[0].astype(np.float64)


def _per_output_channel(op: str, y: np.ndarray) -> np.ndarray:
    if op in ("Conv", "ConvTranspose"):
        return (y**2).sum(axis=tuple(i for i in range(y.ndim) if i != 1))
    return (y**2).reshape(-1, y.shape[-1]).sum(axis=0)


LAYOUTS = [
    ("Conv", (8, 3, 3, 3), {}, (1, 3, 9, 9)),
    ("Conv", (8, 3, 3, 3), {"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2]}, (1, 3, 11, 10)),
    ("Conv", (6, 2, 3, 3), {"group": 3, "pads": [1, 1, 1, 1]}, (2, 6, 7, 7)),
    ("Conv", (6, 1, 3, 3), {"group": 6, "auto_pad": "SAME_UPPER", "strides": [2, 2]}, (1, 6, 8, 7)),
    ("Conv", (4, 3, 5), {"pads": [2, 2]}, (1, 3, 12)),
    (
        "ConvTranspose",
        (4, 3, 3, 3),
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
        (1, 4, 5, 5),
    ),
    ("ConvTranspose", (4, 2, 2, 2), {"strides": [2, 2], "group": 2}, (1, 4, 5, 6)),
    (
        "ConvTranspose",
        (4, 2, 3, 3),
        {"strides": [2, 1], "pads": [0, 1, 2, 0], "dilations": [1, 2]},
        (1, 4, 5, 6),
    ),
    ("MatMul", (5, 7), {}, (2, 3, 5)),
    ("Gemm", (7, 5), {"transB": 1}, (3, 5)),
    ("Gemm", (5, 7), {"transA": 1}, (5, 3)),
]


@pytest.mark.parametrize(("op", "w_shape", "attrs", "x_shape"), LAYOUTS)
def test_the_quadratic_form_is_the_layer_output_error(op, w_shape, attrs, x_shape):
    """d^T H d per output channel equals ||conv(x, W + d) - conv(x, W)||^2 as onnxruntime computes it."""
    rng = np.random.default_rng(0)
    w, d = rng.normal(size=w_shape), rng.normal(size=w_shape) * 0.1
    x = rng.normal(size=x_shape).astype(np.float32)
    layer = S.Layer(_one_node(op, w, attrs, list(x_shape)).graph.node[0], "x", "w")
    gram = S.input_gram(layer, [x], w_shape, rng, max_positions=10**9)
    ours = S.output_errors(S.weight_rows(layer, d, gram.shape[0]), gram)
    expected = _per_output_channel(op, _output(op, w + d, attrs, x) - _output(op, w, attrs, x))
    assert np.allclose(ours, expected, rtol=1e-3)


def small_net() -> onnx.ModelProto:
    """x[1,3,12,12] -> Conv -> Relu -> depthwise Conv -> Relu -> ConvTranspose -> Relu -> Transpose ->
    MatMul -> ReduceMean -> Gemm -> y[1,3]; heavy-tailed weights, so a narrower range can pay off."""
    rng = np.random.default_rng(7)

    def t(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_t(3, size=shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("ConvTranspose", ["r2", "w3", "b3"], ["c3"], strides=[2, 2]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("Transpose", ["r3"], ["t3"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["t3", "w4"], ["m4"]),
        helper.make_node("ReduceMean", ["m4"], ["p4"], axes=[1, 2], keepdims=0),
        helper.make_node("Gemm", ["p4", "w5", "b5"], ["y"], transB=1),
    ]
    inits = [
        t("w1", (8, 3, 3, 3)),
        t("b1", (8,), 0.1),
        t("w2", (8, 1, 3, 3)),
        t("b2", (8,), 0.1),
        t("w3", (8, 4, 2, 2)),
        t("b3", (4,), 0.1),
        t("w4", (4, 6)),
        t("w5", (3, 6)),
        t("b5", (3,), 0.1),
    ]
    return tinymodels.single_io_model(nodes, "small_net", [1, 3, 12, 12], [1, 3], inits)


def data(n: int, seed: int = 1) -> list[dict]:
    return tinymodels.samples(n, seed, shape=(1, 3, 12, 12))


def _float_inputs(model: onnx.ModelProto, names: list[str], samples: list[dict]) -> list[dict]:
    s = ort.InferenceSession(
        with_outputs(model, names).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return [dict(zip(names, s.run(names, x), strict=True)) for x in samples]


def _layer_error(node: onnx.NodeProto, w: np.ndarray, wq: np.ndarray, xs: list[np.ndarray]) -> float:
    """||W x - Q(W) x||^2 summed over samples, computed by onnxruntime on a one-node model."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    total = 0.0
    for x in xs:
        diff = _output(node.op_type, wq, attrs, x) - _output(node.op_type, w, attrs, x)
        total += float((diff**2).sum())
    return total


@pytest.mark.parametrize("per_channel", [True, False])
def test_seq_mse_lowers_every_layers_output_error_against_min_max_weights(per_channel):
    model = dlc.Container(small_net())
    cal = data(8)
    opts = QuantizerOptions(weights_bitwidth=4, bias_bitwidth=32, use_per_channel_quantization=per_channel)
    q = quantize(model, cal, opts, progress=False)
    encodings = EncodingSet()
    encodings.tensors.update(q.encodings.tensors)
    result = S.seq_mse(q.model, encodings, cal, opts, inputs="float", max_positions=10**9, progress=False)
    layers, _ = S.find_layers(q.model, q.encodings)
    assert {layer.weight for layer in layers} == {"w1", "w2", "w3", "w4", "w5"} == set(result.errors)
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in q.model.graph.initializer}
    inputs = _float_inputs(q.model, [layer.input for layer in layers], cal)
    lowered = 0
    for layer in layers:
        w = inits[layer.weight]
        xs = [v[layer.input] for v in inputs]
        before = _layer_error(layer.node, w, dequantized_values(w, q.encodings[layer.weight]), xs)
        after = _layer_error(layer.node, w, dequantized_values(w, encodings[layer.weight]), xs)
        assert after <= before * (1 + 1e-5) + 1e-9, layer.weight  # never raised
        assert np.isclose(result.errors[layer.weight][0], before, rtol=1e-3)
        lowered += after < before * 0.99
    assert lowered >= 3  # and really lowered on most layers of this heavy-tailed net


def test_chosen_encodings_keep_the_schema_and_backend_conventions():
    cal = data(4)
    net = dlc.Container(small_net())
    # HTP: per-channel weights symmetric (signed, offset 0)
    opts = QuantizerOptions(
        weights_bitwidth=4, bias_bitwidth=32, use_per_channel_quantization=True, apply_algorithms=["seq_mse"]
    )
    q = quantize(net, cal, opts, progress=False)
    changed = [t for t in q.encodings.of_kind("param") if t.source == "seq_mse"]
    assert changed
    for t in changed:
        if len(t.encodings) > 1:
            assert all(e.is_symmetric and e.signed and e.offset == 0 for e in t.encodings)
    # symmetric schema with restricted steps: every chosen weight encoding uses exactly those steps
    opts = QuantizerOptions(
        bias_bitwidth=32,
        param_quantizer_schema="symmetric",
        restrict_quantization_steps=(-127, 127),
        apply_algorithms=["seq_mse"],
    )
    q = quantize(net, cal, opts, progress=False)
    for name in ("w1", "w2", "w3", "w4", "w5"):
        for e in q.encodings[name].encodings:
            assert e.offset == 0 and np.isclose(e.min, -127 * e.scale) and np.isclose(e.max, 127 * e.scale)
    # per-tensor asymmetric: zero exactly representable, offset in range
    q = quantize(net, cal, QuantizerOptions(bias_bitwidth=32, apply_algorithms=["seq_mse"]), progress=False)
    for name in ("w1", "w2", "w3", "w4", "w5"):
        (e,) = q.encodings[name].encodings
        assert -255 <= e.offset <= 0 and e.offset == round(e.offset)
    # biases were derived again from the new weight scales (32-bit: input scale x weight scale)
    s_in = q.encodings["r1"].encodings[0].scale
    assert np.isclose(q.encodings["b2"].encodings[0].scale, s_in * q.encodings["w2"].encodings[0].scale)


def test_sequential_search_and_the_quantized_model_runs():
    cal, held = data(8), data(8, seed=9)
    net = dlc.Container(small_net())
    opts = dict(weights_bitwidth=4, bias_bitwidth=32, use_per_channel_quantization=True)
    plain = quantize(net, cal, QuantizerOptions(**opts), progress=False)
    searched = quantize(net, cal, QuantizerOptions(**opts, apply_algorithms=["seq_mse"]), progress=False)
    assert any(
        line.startswith("seq_mse: 5 weights searched") for line in searched.encodings.meta["normalization"]
    )
    ref = np.concatenate([_run(net.model, h)[0].ravel() for h in held])

    def err(c: dlc.Container) -> float:
        out = np.concatenate([_run(to_qdq_model(c), h)[0].ravel() for h in held])
        return float(np.sum((out - ref) ** 2))

    assert np.isfinite(err(searched)) and err(searched) < err(plain)


def test_incremental_runner_gives_the_whole_models_values():
    model, cal = small_net(), data(2)
    runner = S.IncrementalRunner(model, cal, None)
    first = runner.fetch(["r1"])
    later = runner.fetch(["t3", "p4"])
    ref = _float_inputs(model, ["r1", "t3", "p4"], cal)
    for a, b, r in zip(first, later, ref, strict=True):
        assert np.allclose(a["r1"], r["r1"], atol=1e-6)
        assert np.allclose(b["t3"], r["t3"], atol=1e-6) and np.allclose(b["p4"], r["p4"], atol=1e-6)
    assert "r1" not in runner.values[0]  # nothing downstream reads it any more: dropped


def test_plugin_is_listed_as_an_after_calibration_algorithm():
    alg = get_plugin_manager().algorithms.get("seq_mse")
    assert alg.phase == Phase.AFTER_CALIBRATION and "output error" in alg.description


def test_without_samples_the_plugin_says_it_needs_an_input_list():
    alg = get_plugin_manager().algorithms.get("seq_mse")
    with pytest.raises(UsageError, match="seq_mse needs calibration samples"):
        alg.apply(small_net(), CalibrationContext(QuantizerOptions(), EncodingSet(), []))


@pytest.fixture
def case(tmp_path):
    return sq.write_case(tmp_path / "case", small_net(), {"x": [d["x"] for d in data(4)]})


@pytest.mark.parametrize("algorithms", [["seq_mse"], ["cle", "seq_mse", "bias_correction"]])
def test_qairt_quantizer_apply_algorithms_seq_mse(case, tmp_path, capsys, algorithms):
    out = tmp_path / "q.dlc"
    args = sq.io_args("qairt-quantizer", case.model, case.input_list, out)
    args += ["--weights_bitwidth", "4", "--bias_bitwidth", "32", "--use_per_channel_quantization"]
    args += [a for name in algorithms for a in ("--apply_algorithms", name)]
    assert sq.run_command("qairt-quantizer", args) == 0, capsys.readouterr().err
    q = dlc.load(out)
    assert q.encodings.meta["quantizer"]["apply_algorithms"] == algorithms
    assert any(t.source == "seq_mse" for t in q.encodings.of_kind("param"))
    assert any(line.startswith("seq_mse:") for line in q.encodings.meta["normalization"])


def test_qairt_quantizer_seq_mse_without_input_list_is_a_one_line_error(case, tmp_path, capsys):
    capsys.readouterr()
    args = sq.io_args("qairt-quantizer", case.model, None, tmp_path / "q.dlc") + [
        "--apply_algorithms",
        "seq_mse",
    ]
    assert sq.run_command("qairt-quantizer", args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("qairt-quantizer: error: ") and "input_list" in err[0]
    assert not (tmp_path / "q.dlc").exists()


def test_centered_gram_measures_the_error_left_after_removing_its_mean():
    """With bias correction after it, seq_mse scores the output error around its mean."""
    rng = np.random.default_rng(3)
    w, d = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=(4, 3, 3, 3)) * 0.1
    x = (rng.normal(size=(1, 3, 9, 9)) + 2.0).astype(np.float32)
    layer = S.Layer(_one_node("Conv", w, {}, [1, 3, 9, 9]).graph.node[0], "x", "w")
    gram = S.input_gram(layer, [x], w.shape, rng, 10**9, centered=True)
    y = _output("Conv", w + d, {}, x) - _output("Conv", w, {}, x)
    spread = ((y - y.mean(axis=(0, 2, 3), keepdims=True)) ** 2).sum(axis=(0, 2, 3))
    assert np.allclose(S.output_errors(S.weight_rows(layer, d, 1), gram), spread, rtol=1e-3)


def test_chosen_weight_encodings_keep_htps_16bit_multiplier_floor_and_biases_follow_them():
    # with 16-bit activations HTP needs input scale x weight scale / output scale >= 2^-24 (below it the
    # output is garbage), so the backend widens the scale of a channel of weights about zero.  seq_mse's
    # candidates are constrained among the activation encodings, so they keep that floor (before: its
    # narrower candidates ended channel 0 at 0.04 x the floor -- at 8-bit weights and dead=1e-6, 0.2 x,
    # and the HTP emulator's output there 34439 16-bit steps off the CPU simulation); 32-bit biases are
    # re-derived from the chosen weight scales
    opts = QuantizerOptions(
        weights_bitwidth=4,  # so that seq_mse changes the live channels too
        act_bitwidth=16,
        bias_bitwidth=32,
        use_per_channel_quantization=True,
        apply_algorithms=["seq_mse"],
    )
    model = dlc.Container(model=tinymodels.dead_channel_conv(0.0, dead=1e-8))
    q = quantize(model, tinymodels.samples(8), opts, progress=False)
    w = q.encodings["w"].encodings
    assert q.encodings["w"].source == "seq_mse"  # the search did change the weight encoding
    s_x, s_y = q.encodings["x"].encodings[0].scale, q.encodings["y"].encodings[0].scale
    assert min(s_x * e.scale / s_y for e in w) >= 2.0**-24
    # the final encodings are a fixed point of the backend's constraints
    again = EncodingSet.from_json(q.encodings.to_json())
    get_plugin_manager().backends.get("HTP").constrain_encodings(q.model, again)
    assert [(n, t.encodings) for n, t in again.tensors.items()] == [
        (n, t.encodings) for n, t in q.encodings.tensors.items()
    ]
    b = q.encodings["b"].encodings
    assert len(b) == len(w)
    assert np.allclose([e.scale for e in b], [s_x * e.scale for e in w], rtol=1e-6)


def test_htp_constrains_one_weight_as_it_constrains_the_whole_set():
    # constrain_parameter (what seq_mse calls per candidate) is constrain_encodings restricted to one
    # weight: per-channel weights made symmetric, scales widened to the 16-bit multiplier floor
    opts = QuantizerOptions(act_bitwidth=16, bias_bitwidth=32, use_per_channel_quantization=True)
    q = quantize(
        dlc.Container(model=tinymodels.dead_channel_conv(0.0, dead=1e-8)), tinymodels.samples(8), opts
    )
    htp = get_plugin_manager().backends.get("HTP")
    w = q.encodings["w"]
    # an asymmetric candidate with a channel far below the floor
    narrow = [
        dataclasses.replace(e, scale=e.scale * 1e-3, offset=-3, is_symmetric=False) for e in w.encodings
    ]
    results = []
    for constrain in (
        lambda s: htp.constrain_encodings(q.model, s),
        lambda s: htp.constrain_parameter(q.model, s, "w"),
    ):
        trial = EncodingSet.from_json(q.encodings.to_json())
        trial.add(dataclasses.replace(w, encodings=narrow))
        constrain(trial)
        results.append(trial["w"].encodings)
    assert results[0] == results[1] != narrow
    assert all(e.is_symmetric and e.offset == 0 for e in results[1])
    s_x, s_y = q.encodings["x"].encodings[0].scale, q.encodings["y"].encodings[0].scale
    assert min(s_x * e.scale / s_y for e in results[1]) >= 2.0**-24
