"""The quantization engine: statistics, encodings, constraints, overrides, fallback, QDQ export."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from realmodels import sqnr_db
from tinymodels import conv_net, dead_channel_conv, samples

from opendlc import container as dlc
from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.observers import TensorStats
from opendlc.quant.api import quantize
from opendlc.quant.export import to_qdq_model
from opendlc.quant.options import QuantizerOptions
from opendlc.schemas import Encoding


def run(model: onnx.ModelProto, feeds: list[dict]) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [s.run(None, f)[0] for f in feeds]


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(conv_net(), path)
    return dlc.load(path)


def test_statistics_of_halves_merge_into_the_whole():
    rng = np.random.default_rng(3)
    batches = [rng.normal(size=500) * s + o for s, o in [(0.1, 0), (2, 1), (0.01, -3), (7, 0), (1, 10)]]
    whole = TensorStats()
    for b in batches:
        whole.observe(b)
    first, second = TensorStats(), TensorStats()
    for b in batches[:2]:
        first.observe(b)
    for b in batches[2:]:
        second.observe(b)
    merged = first.merge(second)
    assert (merged.count, merged.min, merged.max) == (whole.count, whole.min, whole.max)
    assert merged.width_exp == whole.width_exp and merged.first_bin == whole.first_bin
    assert np.array_equal(merged.hist, whole.hist)
    # bounded state: the histogram never grows with the data
    assert merged.hist.size == whole.hist.size == TensorStats().bins


def test_observing_batch_by_batch_gives_the_statistics_of_all_at_once():
    rng = np.random.default_rng(5)
    # ranges that grow downwards within the same bin width (the bins shift), then past it (they merge)
    batches = [rng.uniform(1.0, 1.9, 300), rng.uniform(0.95, 1.8, 300), rng.uniform(0.9, 1.85, 300)]
    batches += [rng.uniform(-3.0, 1.0, 300), rng.normal(size=300) * 0.01 + 5.0]
    seen = TensorStats()
    for k, b in enumerate(batches):
        seen.observe(b)
        once = TensorStats.of(np.concatenate(batches[: k + 1]))
        assert (seen.width_exp, seen.first_bin, seen.count) == (once.width_exp, once.first_bin, once.count)
        assert np.array_equal(seen.hist, once.hist), k


def test_merging_aligns_bins_of_equal_and_of_different_widths():
    rng = np.random.default_rng(4)
    x = rng.normal(size=4000)
    whole = TensorStats.of(x)
    kinds = set()
    for halves in [(x[::2], x[1::2])] + [(x[x < c], x[x >= c]) for c in (0.0, -1.0, 1.5, 2.5)]:
        parts = [TensorStats.of(h) for h in halves]
        for p in parts:  # a part's bins line up with the whole's (maybe shifted) or are coarsened
            same = p.width_exp == whole.width_exp
            kinds.add(
                "shifted" if same and p.first_bin != whole.first_bin else "aligned" if same else "coarsened"
            )
        for merged in (parts[0].merge(parts[1]), parts[1].merge(parts[0])):
            assert (merged.width_exp, merged.first_bin, merged.count) == (
                whole.width_exp,
                whole.first_bin,
                whole.count,
            )
            assert np.array_equal(merged.hist, whole.hist)
    assert kinds == {"aligned", "shifted", "coarsened"}


def test_min_max_asymmetric_8bit_equals_onnxruntime_minmax(tmp_path, net):
    """Our min-max asymmetric 8-bit activation encodings equal ONNX Runtime's MinMax QUInt8 ones."""
    data = samples(8)
    path = tmp_path / "net.onnx"

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(path),
        str(tmp_path / "ort.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QUInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    ort_model = onnx.load(tmp_path / "ort.onnx")
    consts = {t.name: numpy_helper.to_array(t) for t in ort_model.graph.initializer}
    theirs = {
        n.input[0]: (float(consts[n.input[1]]), int(consts[n.input[2]]))
        for n in ort_model.graph.node
        if n.op_type == "QuantizeLinear"
    }
    # CPU target: no HTP operator constraints, so every range is the calibrated one
    ours = quantize(net, data, QuantizerOptions(target_backend="CPU"), progress=False).encodings
    common = [n for n in theirs if n in ours]
    assert len(common) >= 5
    for name in common:
        scale, zp = theirs[name]
        enc = ours[name].encodings[0]
        assert enc.bitwidth == 8 and not enc.signed
        assert abs(enc.scale - scale) <= 1e-6 * scale, name
        assert -enc.offset == zp, name


def test_qdq_export_simulates_the_quantized_model(net):
    data, held = samples(16), samples(4, seed=9)
    q = quantize(net, data, QuantizerOptions(), progress=False)
    ref = run(net.model, held)
    for bits in (8, 16):
        q = quantize(net, data, QuantizerOptions(act_bitwidth=bits), progress=False)
        out = run(to_qdq_model(q), held)
        assert sqnr_db(np.concatenate(ref), np.concatenate(out)) > (25 if bits == 8 else 40)
    qdq = to_qdq_model(q)
    assert {n.op_type for n in qdq.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}


@pytest.mark.parametrize("bias_bitwidth", [8, 32])
def test_a_bias_always_fits_int32_at_input_times_weight_scale(bias_bitwidth):
    # HTP adds a bias as int32 in units of input scale x weight scale (whatever scale the bias has), so
    # a channel whose weights are about zero would lose its bias there: its weight scale is widened
    opts = QuantizerOptions(use_per_channel_quantization=True, bias_bitwidth=bias_bitwidth)
    q = quantize(dlc.Container(model=dead_channel_conv()), samples(8), opts, progress=False)
    unbiased = quantize(dlc.Container(model=dead_channel_conv(0.0)), samples(8), opts, progress=False)
    s_in = q.encodings["x"].encodings[0].scale
    w_scales = np.array([e.scale for e in q.encodings["w"].encodings])
    plain = np.array([e.scale for e in unbiased.encodings["w"].encodings])
    assert w_scales[0] > 1e6 * plain[0] and np.array_equal(w_scales[1:], plain[1:])  # channel 0 only
    bias = q.encodings["b"]
    b0 = bias.encodings[0].quantize_dequantize(np.float32(0.5))  # what HTP receives
    assert 0.45 < b0 <= w_scales[0] * s_in * (2**31 - 1)  # fits int32 at input x weight scale
    if bias_bitwidth == 32:
        assert np.allclose([e.scale for e in bias.encodings], s_in * w_scales, rtol=1e-12)
    y_cpu = run(to_qdq_model(q), samples(2, seed=9))[0]
    assert np.allclose(y_cpu[0, 0], b0, atol=0.51 * q.encodings["y"].encodings[0].scale)


def test_an_8bit_weight_is_written_as_htp_holds_it():
    from opendlc.plugins.backends.htp_qdq import as_htp_holds

    t = TensorEncoding("w", "param", [Encoding(8, 0.1, -20, -2.0, 23.5)])  # zero point 20
    q = np.full((3, 4), 20, np.uint8)
    q[0] = [0, 10, 30, 147]  # within int8 of the zero point: HTP computes exactly these
    assert as_htp_holds(q, t, 0) is None
    q[1] = [255, 0, 20, 21]  # 235 steps above the zero point: beyond int8
    values, held = as_htp_holds(q, t, 0)
    assert values.dtype == np.int8 and held.axis == 0 and all(e.offset == 0 for e in held.encodings)
    scales = np.array([e.scale for e in held.encodings])
    real = (q.astype(np.float64) - 20) * 0.1
    got = values * scales[:, None]
    assert np.allclose(got[[0, 2]], real[[0, 2]]) and np.allclose(scales[[0, 2]], 0.1)  # untouched
    assert scales[1] == pytest.approx(0.1 * 235 / 127) and values[1, 0] == 127
    assert np.abs(got[1] - real[1]).max() <= scales[1] / 2 + 1e-12


def test_only_htp_containers_get_htp_weights_in_their_simulation():
    from tinymodels import skewed_weight_conv

    # a CPU runtime computes with the weights as quantized; HTP holds them as int8 per channel
    data = samples(4, shape=(1, 256, 6, 6))
    for backend, stored in (("HTP", onnx.TensorProto.INT8), ("CPU", onnx.TensorProto.UINT8)):
        options = QuantizerOptions(target_backend=backend)
        q = quantize(dlc.Container(model=skewed_weight_conv()), data, options, progress=False)
        weight = next(i for i in to_qdq_model(q).graph.initializer if i.name == "w__quantized")
        assert weight.data_type == stored, backend


def test_the_target_backends_hook_is_what_rewrites_the_qdq_model(monkeypatch):
    from tinymodels import skewed_weight_conv

    import opendlc.quant.export as export
    from opendlc.plugin_manager import Provided, Registry
    from opendlc.targets import Backend

    class Recording(Backend):  # a runtime that computes as onnxruntime's CPU does
        def match_qdq_model(self, model, encodings):
            calls.append((model, encodings))

    def weight_type(model: onnx.ModelProto) -> int:
        return next(i for i in model.graph.initializer if i.name == "w__quantized").data_type

    data = samples(4, shape=(1, 256, 6, 6))
    q = quantize(dlc.Container(model=skewed_weight_conv()), data, QuantizerOptions(), progress=False)
    htp = to_qdq_model(q)
    assert weight_type(htp) == onnx.TensorProto.INT8  # the HTP plugin's hook: held as int8 per channel
    lower = quantize(
        dlc.Container(model=skewed_weight_conv()),
        data,
        QuantizerOptions(target_backend="htp"),
        progress=False,
    )
    assert to_qdq_model(lower).SerializeToString() == htp.SerializeToString()  # backend names fold case

    calls: list = []
    recording = Recording("HTP", "records its hook's calls", (8,), (8,), (8,), False, False, False)

    class Plugins:
        backends = Registry("backend", [Provided(recording, "test", "test")], casefold=True)

    monkeypatch.setattr(export, "get_plugin_manager", lambda: Plugins)
    plain = to_qdq_model(q)
    assert len(calls) == 1 and calls[0][0] is plain and calls[0][1] is q.encodings  # once, on what it returns
    assert weight_type(plain) == onnx.TensorProto.UINT8  # the HTP rewrite is the HTP plugin's, not export's
    Plugins.backends = Registry("backend", [], casefold=True)  # a target no plugin registers: no error
    assert to_qdq_model(q).SerializeToString() == plain.SerializeToString()


def test_per_channel_weights_bias32_and_htp_constraints(net):
    q = quantize(
        net, samples(8), QuantizerOptions(use_per_channel_quantization=True, bias_bitwidth=32), progress=False
    )
    enc = q.encodings
    w1 = enc["w1"]
    assert len(w1.encodings) == 4 and w1.axis == 0
    assert all(e.is_symmetric and e.offset == 0 for e in w1.encodings)  # HTP: symmetric per-channel
    b1 = enc["b1"]
    s_in = enc["x"].encodings[0].scale
    assert [e.bitwidth for e in b1.encodings] == [32] * 4
    assert np.allclose([e.scale for e in b1.encodings], [s_in * e.scale for e in w1.encodings], rtol=1e-12)
    # Reshape shares its input's encoding; 8-bit Sigmoid keeps its calibrated range
    assert enc["y"].encodings == enc["m"].encodings
    assert enc["s"].source == "calibration"
    # 16-bit Sigmoid: QNN's fixed [0, 1) encoding
    s16 = (
        quantize(net, samples(8), QuantizerOptions(act_bitwidth=16), progress=False)
        .encodings["s"]
        .encodings[0]
    )
    assert (s16.scale, s16.offset) == (2.0**-16, 0)


def test_schemas_and_bitwidths_reach_the_encodings(net):
    data = samples(4)
    q = quantize(
        net,
        data,
        QuantizerOptions(
            act_bitwidth=16,
            weights_bitwidth=4,
            act_quantizer_schema="symmetric",
            param_quantizer_schema="symmetric",
        ),
        progress=False,
    ).encodings
    assert q["r1"].encodings[0].bitwidth == 16 and q["r1"].encodings[0].offset == 0
    assert "c1" not in q  # Conv -> Relu runs fused: no encoding between them
    assert q["w2"].encodings[0].bitwidth == 4 and q["w2"].encodings[0].signed
    steps = (
        quantize(
            net,
            data,
            QuantizerOptions(param_quantizer_schema="symmetric", restrict_quantization_steps=(-0x80, 0x7F)),
            progress=False,
        )
        .encodings["w2"]
        .encodings[0]
    )
    assert steps.min == pytest.approx(-128 * steps.scale) and steps.max == pytest.approx(127 * steps.scale)


def test_degenerate_data_warns_and_never_makes_nan(tmp_path, net, caplog):
    data = samples(3)
    data[1]["x"][0, 0, 0, 0] = np.nan
    data[2]["x"][0, 0, 0, 1] = np.inf
    zeros = [{"x": np.zeros((1, 3, 8, 8), np.float32)}]
    with caplog.at_level(logging.WARNING, logger="opendlc"):
        q = quantize(net, data, QuantizerOptions(), progress=False)
        z = quantize(net, zeros, QuantizerOptions(), progress=False)
    assert "NaN/Inf" in caplog.text and "'x'" in caplog.text
    assert "constant" in caplog.text
    for es in (q.encodings, z.encodings):
        for t in es.tensors.values():
            for e in t.encodings:
                assert np.isfinite(e.scale) and e.scale > 0 and np.isfinite(e.min) and np.isfinite(e.max)


def test_overrides_win_unless_ignored(net):
    forced = Encoding(8, 0.5, -10, -5.0, 122.5)
    net.overrides = EncodingSet({"r1": TensorEncoding("r1", "activation", [forced], source="overrides")})
    data = samples(4)
    assert quantize(net, data, QuantizerOptions(), progress=False).encodings["r1"].encodings == [forced]
    ignored = quantize(net, data, QuantizerOptions(ignore_quantization_overrides=True), progress=False)
    assert ignored.encodings["r1"].encodings != [forced]


def test_float_fallback_propagates_and_leaves_the_rest_float(net):
    enc = Encoding(8, 0.1, -128, -12.8, 12.7)
    net.overrides = EncodingSet({"m": TensorEncoding("m", "activation", [enc], source="overrides")})
    q = quantize(net, None, QuantizerOptions(enable_float_fallback=True, float_bitwidth=16), progress=False)
    e = q.encodings
    assert e["y"].encodings == [enc] and e["y"].source == "propagated"  # across the Reshape
    assert e["r1"].dtype == "float" and e["r1"].float_bitwidth == 16
    run(to_qdq_model(q), samples(1))  # the fp16 simulation runs
    with pytest.raises(Exception, match="input_list"):
        quantize(net, samples(1), QuantizerOptions(enable_float_fallback=True), progress=False)


def test_bias_correction_removes_the_mean_shift_of_weight_quantization(net):
    from opendlc.quant.bias_correction import correct_biases, input_channel_means
    from opendlc.quant.export import dequantized_values

    rng = np.random.default_rng(5)
    # inputs with a large mean: weight rounding errors then shift the conv outputs' means
    data = [{"x": (rng.normal(size=(1, 3, 8, 8)) + 3.0).astype(np.float32)} for _ in range(8)]
    q = quantize(net, data, QuantizerOptions(weights_bitwidth=4, bias_bitwidth=32), progress=False)
    fixed, report = correct_biases(q.model, q.encodings, data)
    assert "corrected" in report[0]
    inits = {t.name: numpy_helper.to_array(t) for t in q.model.graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in fixed.graph.initializer}
    w1 = inits["w1"].astype(np.float64)
    mean_x = input_channel_means(q.model, ["x"], data)["x"]
    expected = np.einsum("mchw,c->m", dequantized_values(w1, q.encodings["w1"]) - w1, mean_x)
    assert np.allclose(inits["b1"] - new["b1"], expected, rtol=1e-4, atol=1e-6)
    assert np.abs(expected).max() > 1e-3  # the shift is real at 4 bits
    # the engine applies it and keeps a working model
    corrected = quantize(
        net,
        data,
        QuantizerOptions(weights_bitwidth=4, bias_bitwidth=32, apply_algorithms=["bias_correction"]),
        progress=False,
    )
    held = [{"x": (rng.normal(size=(1, 3, 8, 8)) + 3.0).astype(np.float32)} for _ in range(8)]
    ref = np.concatenate(run(net.model, held))
    before = sqnr_db(ref, np.concatenate(run(to_qdq_model(q), held)))
    after = sqnr_db(ref, np.concatenate(run(to_qdq_model(corrected), held)))
    assert after > before
