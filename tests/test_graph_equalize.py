"""Cross-layer equalization: float function kept, ranges balanced, per-tensor weight SQNR improved."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphtools import const, model, op_types, outputs_over, relative_error, run
from onnx import helper, numpy_helper

from opendlc.graph.equalize import Layout, channel_ranges, equalize

RNG = np.random.default_rng(3)
X = ("x", [1, 3, 10, 10])


def samples(n=3):
    return [{"x": RNG.standard_normal((1, 3, 10, 10)).astype(np.float32)} for _ in range(n)]


def weights(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return {n.name: inits[n.input[1]] for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose")}


def unbalanced_pair(activation: str = "Relu", group2: int = 1) -> onnx.ModelProto:
    """Conv(3->8) -> activation -> Conv(8->4): channel i of the first is 10^u_i too large, the second
    conv's input i 10^-u_i too small -- the same function as a balanced pair, badly quantizable."""
    u = np.linspace(-2, 2, 8)
    w1 = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * (10**u).reshape(8, 1, 1, 1).astype(np.float32)
    b1 = (RNG.standard_normal(8) * 10**u).astype(np.float32)
    w2 = RNG.standard_normal((4 * group2, 8 // group2, 3, 3)).astype(np.float32)
    w2 = (w2.reshape(group2, 4, 8 // group2, 3, 3) * (10**-u).reshape(group2, 1, 8 // group2, 1, 1)).reshape(
        w2.shape
    )
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], pads=[1] * 4, name="conv1")]
    mid = "y1"
    inits = [const("w1", w1), const("b1", b1), const("w2", w2), const("b2", RNG.standard_normal(4 * group2))]
    if activation == "PRelu":
        inits.append(const("slope", RNG.uniform(0.05, 0.3, (8, 1, 1))))
        nodes.append(helper.make_node("PRelu", ["y1", "slope"], ["a1"]))
        mid = "a1"
    elif activation:
        attrs = {"alpha": 0.1} if activation == "LeakyRelu" else {}
        nodes.append(helper.make_node(activation, ["y1"], ["a1"], **attrs))
        mid = "a1"
    nodes.append(
        helper.make_node("Conv", [mid, "w2", "b2"], ["out"], pads=[1] * 4, group=group2, name="conv2")
    )
    return model(nodes, [X], [("out", None)], inits)


def quantize_weights_per_tensor(m: onnx.ModelProto, bits: int = 8) -> onnx.ModelProto:
    """Conv weights replaced by their per-tensor min-max asymmetric quantize-dequantize."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    names = {n.input[1] for n in out.graph.node if n.op_type in ("Conv", "ConvTranspose")}
    for t in out.graph.initializer:
        if t.name in names:
            w = numpy_helper.to_array(t).astype(np.float64)
            lo, hi = min(w.min(), 0.0), max(w.max(), 0.0)
            scale = (hi - lo) / (2**bits - 1)
            zero = np.round(-lo / scale)
            q = np.clip(np.round(w / scale) + zero, 0, 2**bits - 1)
            t.CopyFrom(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), t.name))
    return out


def sqnr_db(ref: list[np.ndarray], test: list[np.ndarray]) -> float:
    r = np.concatenate([a.ravel() for a in ref]).astype(np.float64)
    t = np.concatenate([a.ravel() for a in test]).astype(np.float64)
    return float(10 * np.log10(np.sum(r * r) / np.sum((r - t) ** 2)))


@pytest.mark.parametrize("activation", ["Relu", "LeakyRelu", "PRelu", None])
def test_unbalanced_pair_is_balanced_and_quantizes_better(activation):
    m = unbalanced_pair(activation)
    result = equalize(m)
    assert [(p.first, p.second, p.activation) for p in result.pairs] == [("conv1", "conv2", activation)]
    data = samples()
    ref = outputs_over(m, data)
    assert relative_error(ref, outputs_over(result.model, data)) < 1e-5

    before = channel_ranges(weights(m)["conv1"], weights(m)["conv2"], 1)
    after = channel_ranges(weights(result.model)["conv1"], weights(result.model)["conv2"], 1)
    assert np.ptp(np.log10(before[0])) > 3  # the built pair really is unbalanced
    np.testing.assert_allclose(after[0], after[1], rtol=1e-3)  # each channel: same range on both sides
    assert np.ptp(np.log10(after[0])) < 0.5 * np.ptp(np.log10(before[0]))

    sqnr_before = sqnr_db(ref, outputs_over(quantize_weights_per_tensor(m), data))
    sqnr_after = sqnr_db(ref, outputs_over(quantize_weights_per_tensor(result.model), data))
    assert sqnr_after > sqnr_before + 10, (sqnr_before, sqnr_after)


def test_grouped_second_conv_is_equalized():
    m = unbalanced_pair("Relu", group2=2)
    result = equalize(m)
    assert len(result.pairs) == 1
    data = samples()
    assert relative_error(outputs_over(m, data), outputs_over(result.model, data)) < 1e-5
    r1, r2 = channel_ranges(weights(result.model)["conv1"], weights(result.model)["conv2"], 2)
    np.testing.assert_allclose(r1, r2, rtol=1e-3)


def test_chain_with_batch_norm_and_depthwise_converges():
    """Conv -> BN -> Relu -> depthwise Conv -> LeakyRelu -> Conv: two pairs sharing the middle conv."""
    c = 8
    inits = [
        const("w1", RNG.standard_normal((c, 3, 3, 3)) * np.logspace(-1, 1, c).reshape(c, 1, 1, 1)),
        const("g", RNG.uniform(0.5, 2, c)),
        const("beta", RNG.standard_normal(c)),
        const("mean", RNG.standard_normal(c)),
        const("var", RNG.uniform(0.5, 2, c)),
        const("wd", RNG.standard_normal((c, 1, 3, 3)) * np.logspace(1, -1, c).reshape(c, 1, 1, 1)),
        const("bd", RNG.standard_normal(c)),
        const("w3", RNG.standard_normal((5, c, 1, 1))),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["y1"], pads=[1] * 4, name="conv1"),
        helper.make_node("BatchNormalization", ["y1", "g", "beta", "mean", "var"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["a1"]),
        helper.make_node("Conv", ["a1", "wd", "bd"], ["y2"], pads=[1] * 4, group=c, name="dw"),
        helper.make_node("LeakyRelu", ["y2"], ["a2"], alpha=0.2),
        helper.make_node("Conv", ["a2", "w3"], ["out"], name="conv3"),
    ]
    m = model(nodes, [X], [("out", None)], inits)
    result = equalize(m)
    assert "BatchNormalization" not in op_types(result.model)
    assert {(p.first, p.second) for p in result.pairs} == {("conv1", "dw"), ("dw", "conv3")}
    assert 1 < result.iterations < 100  # converged, not stopped by the limit
    data = samples()
    assert relative_error(outputs_over(m, data), outputs_over(result.model, data)) < 1e-5


def scale_output_channel(w: np.ndarray, op: str, group: int, channel: int, factor: float) -> None:
    """Multiply every weight producing output ``channel`` (written out per op, not via Layout)."""
    if op == "Conv":  # (C_out, C_in / group, k...)
        w[channel] *= factor
    else:  # ConvTranspose: (C_in, C_out / group, k...); output channel = group index * per_group + j
        per_group_out, per_group_in = w.shape[1], w.shape[0] // group
        g, j = divmod(channel, per_group_out)
        w[g * per_group_in : (g + 1) * per_group_in, j] *= factor


def scale_input_channel(w: np.ndarray, op: str, group: int, channel: int, factor: float) -> None:
    """Multiply every weight reading input ``channel``."""
    if op == "ConvTranspose":
        w[channel] *= factor
    else:
        per_group_in, per_group_out = w.shape[1], w.shape[0] // group
        g, j = divmod(channel, per_group_in)
        w[g * per_group_out : (g + 1) * per_group_out, j] *= factor


def conv_node(op: str, inputs: list[str], output: str, name: str, group: int) -> onnx.NodeProto:
    if op == "Conv":
        return helper.make_node("Conv", inputs, [output], pads=[1] * 4, group=group, name=name)
    return helper.make_node(
        "ConvTranspose", inputs, [output], strides=[2, 2], pads=[1] * 4, group=group, name=name
    )


def weight_shape(op: str, c_in: int, c_out: int, group: int) -> tuple[int, ...]:
    return (c_out, c_in // group, 3, 3) if op == "Conv" else (c_in, c_out // group, 3, 3)


@pytest.mark.parametrize(
    "ops",
    [
        (("Conv", 1), ("ConvTranspose", 1)),
        (("Conv", 1), ("ConvTranspose", 2), ("Conv", 4)),
        (("ConvTranspose", 1), ("ConvTranspose", 4), ("ConvTranspose", 1)),
    ],
)
def test_transposed_convolutions_are_equalized(ops):
    """ConvTranspose on either side of a pair (grouped too): its weights are (C_in, C_out / group, k...),
    the other way round from Conv's.  A channel mapping mistake would change the float function."""
    channels = [3, 8, 8, 4][: len(ops) + 1]
    u = [np.linspace(-2, 2, c) for c in channels]  # output channel i of layer n is 10^u too large ...
    ws = []
    for n, (op, group) in enumerate(ops):
        w = RNG.standard_normal(weight_shape(op, channels[n], channels[n + 1], group))
        for i in range(channels[n + 1]):
            scale_output_channel(w, op, group, i, 10 ** u[n + 1][i])
        if n:  # ... and the next layer's input channel i 10^u too small: the same function
            for i in range(channels[n]):
                scale_input_channel(w, op, group, i, 10 ** -u[n][i])
        ws.append(w)
    inits, nodes, x = [], [], "x"
    for n, (op, group) in enumerate(ops):
        inits += [const(f"w{n}", ws[n]), const(f"b{n}", RNG.standard_normal(channels[n + 1]))]
        nodes.append(conv_node(op, [x, f"w{n}", f"b{n}"], f"y{n}", f"layer{n}", group))
        x = f"y{n}"
        if n < len(ops) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"a{n}"]))
            x = f"a{n}"
    nodes[-1].output[0] = "out"
    m = model(nodes, [X], [("out", None)], inits)

    result = equalize(m)
    assert [(p.first, p.second) for p in result.pairs] == [
        (f"layer{n}", f"layer{n + 1}") for n in range(len(ops) - 1)
    ]
    data = samples()
    assert relative_error(outputs_over(m, data), outputs_over(result.model, data)) < 1e-5
    for n in range(len(ops) - 1):
        (op1, g1), (op2, g2) = ops[n], ops[n + 1]

        def ranges(w, n=n, g1=g1, g2=g2, op1=op1, op2=op2):
            return channel_ranges(
                w[f"layer{n}"],
                w[f"layer{n + 1}"],
                g2,
                layout1=Layout(g1, op1 == "ConvTranspose"),
                transposed2=op2 == "ConvTranspose",
            )

        before, (r1, r2) = ranges(weights(m)), ranges(weights(result.model))
        assert np.abs(np.log10(before[0] / before[1])).max() > 1  # really unbalanced before
        np.testing.assert_allclose(r1, r2, rtol=1e-3)  # each channel: the same range on both sides
    ref = outputs_over(m, data)
    sqnr_before = sqnr_db(ref, outputs_over(quantize_weights_per_tensor(m), data))
    sqnr_after = sqnr_db(ref, outputs_over(quantize_weights_per_tensor(result.model), data))
    assert sqnr_after > sqnr_before + 10, (sqnr_before, sqnr_after)


@pytest.mark.parametrize("between", ["Clip", "HardSwish", "Sigmoid", "branch"])
def test_no_equalization_across_non_homogeneous_ops_or_branches(between):
    inits = [const("w1", RNG.standard_normal((8, 3, 1, 1))), const("w2", RNG.standard_normal((4, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["y1"], name="conv1")]
    outputs = [("out", None)]
    if between == "Clip":
        inits += [const("lo", np.float32(0)), const("hi", np.float32(6))]
        nodes.append(helper.make_node("Clip", ["y1", "lo", "hi"], ["a"]))
    elif between == "branch":  # y1 is also read by a second node (a residual, an SE gate...)
        nodes.append(helper.make_node("Relu", ["y1"], ["a"]))
        nodes.append(helper.make_node("Sigmoid", ["y1"], ["side"]))
        outputs.append(("side", None))
    else:
        nodes.append(helper.make_node(between, ["y1"], ["a"]))
    nodes.append(helper.make_node("Conv", ["a", "w2"], ["out"], name="conv2"))
    m = model(nodes, [X], outputs, inits)
    result = equalize(m)
    assert result.pairs == []
    for name, w in weights(m).items():
        np.testing.assert_array_equal(weights(result.model)[name], w)


def test_cle_plugin_is_registered_and_unknown_names_list_the_known_ones(monkeypatch):
    from opendlc.algorithms import Phase
    from opendlc.errors import UsageError
    from opendlc.plugin_manager import get_plugin_manager, reset_plugin_manager

    monkeypatch.setenv("OPENDLC_LOAD_PLUGINS", "algorithm_cle")
    reset_plugin_manager()
    try:
        registry = get_plugin_manager().algorithms
        cle = registry.get("cle")
        assert cle.phase == Phase.BEFORE_CALIBRATION and cle.description
        with pytest.raises(UsageError, match=r"unknown algorithm 'nope' \(known: .*cle"):
            registry.get("nope")
        m = unbalanced_pair("Relu")
        out = cle.apply(m, None)  # context may be None
        data = samples()
        assert relative_error(outputs_over(m, data), outputs_over(out, data)) < 1e-5
    finally:
        reset_plugin_manager()


@pytest.mark.real_models
@pytest.mark.parametrize("normalized_first", [False, True])
def test_ppocr_cls_float_outputs_are_kept(ppocr, normalized_first):
    """The classifier as shipped (35 unfused BN, decomposed hard-swish) and after normalize()."""
    import realmodels

    from opendlc.graph.normalize import normalize
    from opendlc.model_edit import set_input_shapes

    shape = realmodels.input_shape("cls")
    m = set_input_shapes(onnx.load(ppocr("cls")), {"x": list(shape)})
    source = normalize(m).model if normalized_first else m
    chooser = [{"x": x} for x in realmodels.image_crops(shape, 8, seed=6)]  # chooses plain-pair amounts
    grid = sdk_bias_grid()  # and the biases go on the SDK's default 8-bit bias grid
    result = equalize(source, samples=chooser, center_plain_pairs=True, bias_grid=grid)
    # as shipped, the SE blocks' conv biases are Reshape(Constant) nodes: only normalize()'s constant
    # folding makes them parameters, and those convs pairs.  Hard-swish chains are never pairs.
    assert len(result.pairs) == (15 if normalized_first else 6), result.report
    assert "BatchNormalization" not in op_types(result.model)
    if normalized_first:  # a plain projection -> expansion pair, and one proven across a Relu
        assert {a.second for a in result.absorbed} == {"Conv@6", "Conv@8"}, result.absorbed
    assert result.snapped and all(s.error_after < s.error_before for s in result.snapped)
    data = [{"x": x} for x in realmodels.image_crops(shape, 4, seed=5)]  # other crops than the chooser
    assert relative_error(outputs_over(m, data), outputs_over(result.model, data)) < 1e-4


# ---- high-bias absorption ------------------------------------------------------------------------
def absorption_model(
    activation: str | None, *, bounded: bool = True, consumer_pads: int = 0
) -> onnx.ModelProto:
    """[Sigmoid ->] Conv(3->8, 3x3, padded) -> [activation] -> Conv(8->4, 1x1 or padded 3x3).

    Behind a Sigmoid the first conv's input lies in [0, 1]: channels 0-3 get only positive weights and
    a large positive bias, so their pre-activation provably stays above that bias."""
    w1 = RNG.standard_normal((8, 3, 3, 3)) * 0.3
    w1[:4] = np.abs(w1[:4])
    b1 = np.concatenate([[5.0, 8.0, 3.0, 12.0], RNG.standard_normal(4)])
    k = 1 + 2 * consumer_pads
    inits = [const("w1", w1), const("b1", b1), const("w2", RNG.standard_normal((4, 8, k, k)))]
    inits.append(const("b2", RNG.standard_normal(4)))
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"])] if bounded else []
    nodes.append(
        helper.make_node("Conv", ["s" if bounded else "x", "w1", "b1"], ["y1"], pads=[1] * 4, name="conv1")
    )
    mid = "y1"
    if activation:
        nodes.append(
            helper.make_node(
                activation, ["y1"], ["a1"], **({"alpha": 0.1} if activation == "LeakyRelu" else {})
            )
        )
        mid = "a1"
    nodes.append(helper.make_node("Conv", [mid, "w2", "b2"], ["out"], pads=[consumer_pads] * 4, name="conv2"))
    return model(nodes, [X], [("out", None)], inits)


def biases(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return {n.name: inits[n.input[2]] for n in m.graph.node if n.op_type == "Conv"}


def tensor_over(m: onnx.ModelProto, name: str, data: list[dict[str, np.ndarray]]) -> np.ndarray:
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return np.stack([run(probe, feeds)[-1] for feeds in data])


@pytest.mark.parametrize("activation", ["Relu", "LeakyRelu"])
def test_proven_high_bias_is_absorbed_across_relu_exactly_and_narrows_the_activation(activation):
    m = absorption_model(activation)
    data = samples(4)
    result = equalize(m)
    assert [(a.first, a.second) for a in result.absorbed] == [("conv1", "conv2")]
    amount = result.absorbed[0].amount
    assert np.all(amount[:4] > 0) and np.all(amount[4:] == 0)  # only the provably positive channels
    pre = tensor_over(result.model, "y1", data)  # conv1's output after absorption: still >= 0 there
    assert pre[:, :, :4].min() >= -1e-6
    assert relative_error(outputs_over(m, data), outputs_over(result.model, data)) < 1e-5
    # the activation feeding conv2 (what gets one per-tensor encoding) is narrower, conv1's bias smaller
    before, after = tensor_over(m, "a1", data), tensor_over(result.model, "a1", data)
    assert np.ptp(after) < 0.8 * np.ptp(before)
    assert np.abs(biases(result.model)["conv1"]).max() < 0.8 * np.abs(biases(m)["conv1"]).max()


def test_nothing_crosses_relu_without_a_proof_or_into_a_padded_consumer():
    data = samples(4)
    for m in (absorption_model("Relu", bounded=False), absorption_model("Relu", consumer_pads=1)):
        result = equalize(m, samples=data)  # samples never widen what crosses an activation
        assert result.absorbed == []
        assert relative_error(outputs_over(m, data), outputs_over(result.model, data)) < 1e-5


def test_plain_pair_is_centred_on_the_samples_exactly():
    """No activation, 1x1 consumer: any amount is exact; the samples' per-channel middle is moved, so
    conv1's output shares one narrower per-tensor range.  Without samples (input unbounded) nothing
    moves."""
    m = absorption_model(None, bounded=False)
    assert equalize(m, center_plain_pairs=True).absorbed == []
    assert equalize(m, samples=samples(4)).absorbed == []  # off by default
    data = samples(4)
    result = equalize(m, samples=data, center_plain_pairs=True)
    assert [(a.first, a.second) for a in result.absorbed] == [("conv1", "conv2")]
    check = samples(3)  # other inputs than the ones that chose the amounts: exact for any input
    assert relative_error(outputs_over(m, check), outputs_over(result.model, check)) < 1e-5
    before, after = (
        tensor_over(equalize(m, absorb_biases=False).model, "y1", data),
        tensor_over(result.model, "y1", data),
    )
    assert np.ptp(after) < np.ptp(before)
    centres = (after.min(axis=(0, 1, 3, 4)) + after.max(axis=(0, 1, 3, 4))) / 2
    np.testing.assert_allclose(centres, 0, atol=1e-4)


@pytest.mark.parametrize("producer", ["Sigmoid", "Relu", "Clip", "HardSwish", "GlobalAveragePool"])
def test_proven_bounds_hold(producer):
    """The interval bound of a conv's output must contain every value it takes (else an absorption
    across a Relu would change the model)."""
    from opendlc.graph.bias_absorption import conv_output_bounds, tensor_bounds
    from opendlc.graph.view import GraphView

    inits = [const("w", RNG.standard_normal((6, 3, 3, 3))), const("b", RNG.standard_normal(6))]
    src = "x"
    nodes = []
    if producer == "Clip":
        inits += [const("lo", np.float32(-1)), const("hi", np.float32(2))]
        nodes.append(helper.make_node("Clip", ["x", "lo", "hi"], ["p"]))
    elif producer == "GlobalAveragePool":
        nodes += [
            helper.make_node("Sigmoid", ["x"], ["s"]),
            helper.make_node("GlobalAveragePool", ["s"], ["p"]),
        ]
    else:
        nodes.append(helper.make_node(producer, ["x"], ["p"]))
    src = "p"
    nodes.append(helper.make_node("Conv", [src, "w", "b"], ["y"], pads=[1] * 4, name="conv"))
    m = model(nodes, [X], [("y", None)], inits)
    view = GraphView(m)
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    lo, hi = tensor_bounds(view, "p")
    expected = {"Sigmoid": (0, 1), "Relu": (0, np.inf), "Clip": (-1, 2), "HardSwish": (-0.375, np.inf)}
    assert (lo, hi) == expected.get(producer, (0, 1))
    lower, upper = conv_output_bounds(view, conv, Layout().canonical(view.const("w")), view.const("b"))
    data = [{"x": (RNG.standard_normal((1, 3, 10, 10)) * 4).astype(np.float32)} for _ in range(8)]
    y = np.stack([run(m, d)[0] for d in data])
    assert np.all(y.min(axis=(0, 1, 3, 4)) >= lower - 1e-5)
    assert np.all(y.max(axis=(0, 1, 3, 4)) <= upper + 1e-5)


def test_quantizer_gives_cle_a_few_samples_and_still_calibrates_on_all_of_a_stream():
    """A one-shot iterator: before-calibration algorithms get its first inputs, calibration still sees
    every one."""
    from opendlc.container import Container
    from opendlc.quant.api import quantize
    from opendlc.quant.options import QuantizerOptions

    m = absorption_model("Relu")
    data = samples(10)
    q = quantize(Container(m), iter(data), QuantizerOptions(apply_algorithms=["cle"]), progress=False)
    assert q.encodings.meta["samples"] == 10
    assert any("absorbed high biases across 1 of 1" in line for line in q.encodings.meta["normalization"])


# ---- biases on the bias grid -------------------------------------------------------------------------
def sdk_bias_grid():
    """The quantizer's quantize-dequantize of a bias with the SDK's default 8-bit bias encoding."""
    from opendlc.plugins.algorithms.cle import bias_grid
    from opendlc.quant.options import QuantizerOptions

    return bias_grid(QuantizerOptions(bias_bitwidth=8))


def param(m: onnx.ModelProto, node: str, index: int) -> np.ndarray:
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    return inits[next(n for n in m.graph.node if n.name == node).input[index]]


@pytest.mark.parametrize("activation", ["Relu", "PRelu", None])
def test_equalized_biases_go_on_the_bias_grid_exactly(activation):
    from opendlc.graph.bias_grid import rounding_error

    m = unbalanced_pair(activation)
    grid = sdk_bias_grid()
    plain = equalize(m, absorb_biases=False)
    snapped = equalize(m, absorb_biases=False, bias_grid=grid)
    data = samples()
    assert relative_error(outputs_over(m, data), outputs_over(snapped.model, data)) < 1e-5
    b_plain, b_snapped = param(plain.model, "conv1", 2), param(snapped.model, "conv1", 2)
    assert [s.first for s in snapped.snapped] == ["conv1"] and snapped.snapped[0].channels >= 4
    assert rounding_error(b_snapped, grid) < 0.5 * rounding_error(b_plain, grid)
    # every rescaled channel lies on the grid (the extremes that set the grid may stay off it)
    f = b_plain.astype(np.float64) / b_snapped
    moved = f != 1
    off = np.abs(grid(b_snapped.astype(np.float64)) - b_snapped)
    assert np.all(off[moved] < 1e-5 * np.ptp(b_snapped)), off
    # each channel left the balance by at most 5%, and no weight tensor's range grew
    assert np.all(np.abs(np.log(f)) <= np.log(1.05) + 1e-6)
    for node in ("conv1", "conv2"):
        w_plain, w_snapped = param(plain.model, node, 1), param(snapped.model, node, 1)
        assert w_snapped.max() <= w_plain.max() * (1 + 1e-6) and w_snapped.min() >= w_plain.min() * (1 + 1e-6)


def test_grid_factors_stay_within_their_limits():
    from opendlc.graph.bias_grid import grid_factors

    bias = RNG.standard_normal(16) * 3
    grid = sdk_bias_grid()
    assert np.all(grid_factors(bias, grid, np.ones(16), np.ones(16)) == 1)  # no room: nothing moves
    lower, upper = np.full(16, 0.99), np.full(16, 1.01)
    f = grid_factors(bias, grid, lower, upper)
    assert np.all((f == 1) | ((f >= 0.99) & (f <= 1.01))) and np.any(f != 1)


@pytest.mark.parametrize("bits", [8, 32])
def test_cle_uses_the_bias_grid_only_for_narrow_biases(bits):
    from opendlc.plugin_manager import get_plugin_manager
    from opendlc.quant.options import QuantizerOptions

    m = unbalanced_pair("Relu")
    report: list[str] = []
    context = {"options": QuantizerOptions(bias_bitwidth=bits), "report": report}
    out = get_plugin_manager().algorithms.get("cle").apply(m, context)
    on_grid = any("on the bias grid" in line for line in report)
    assert on_grid == (bits == 8), report
    unchanged = param(out, "conv1", 2) == param(equalize(m).model, "conv1", 2)
    assert bool(np.all(unchanged)) == (bits == 32)
    data = samples()
    assert relative_error(outputs_over(m, data), outputs_over(out, data)) < 1e-5
