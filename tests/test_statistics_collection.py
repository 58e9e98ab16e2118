"""How calibration collects statistics: in-graph summaries, one histogram pass for all tensors, several
samples at once, and schemas that encode many candidate ranges at once -- all exactly equal to the
one-at-a-time definitions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tinymodels import conv_net, samples

from opendlc.observers import BINS, StatsGroup, TensorStats
from opendlc.plugin_manager import get_plugin_manager
from opendlc.quant.calibrate import (
    HISTOGRAM_SAMPLE,
    collect_statistics,
    statistics_model,
    subsample_step,
)
from opendlc.schemas import Encoding, QuantizationSchema


def _same(a: TensorStats, b: TensorStats) -> bool:
    return a.to_dict() == b.to_dict()


def test_a_group_observes_exactly_what_each_tensor_would() -> None:
    rng = np.random.default_rng(5)
    # ranges that grow, shrink, sit far from zero, are constant, or are empty in some samples; the last
    # is empty at first, then narrow and so far from zero that its bin numbers outgrow float32
    shapes = [(0.1, 0.0), (3.0, 1.0), (0.01, -40.0), (0.0, 2.0), (5.0, 0.0), (1e-3, 30000.0)]
    group_stats = [TensorStats() for _ in shapes]
    alone = [TensorStats() for _ in shapes]
    group = StatsGroup(group_stats)
    for k in range(12):
        values, lo, hi, n, lengths = [], [], [], [], []
        for i, (spread, centre) in enumerate(shapes):
            size = 0 if (i == 4 and k % 3 == 0) or (i == 5 and k < 4) else int(rng.integers(1, 300))
            x = (rng.normal(size=size) * spread * (1 + k) + centre).astype(np.float32)
            sub = x[:: 1 + k % 3]
            values.append(sub)
            lo.append(float(x.min()) if size else 0.0)
            hi.append(float(x.max()) if size else 0.0)
            n.append(size)
            lengths.append(sub.size)
            alone[i].observe_summary(lo[-1], hi[-1], size, sub)
        group.observe_summaries(
            np.array(lo), np.array(hi), np.array(n), np.concatenate(values), np.array(lengths)
        )
    for g, a in zip(group_stats, alone, strict=True):
        assert _same(g, a)
    assert group_stats[0].hist.sum() > 0 and group_stats[3].min == group_stats[3].max == 2.0
    assert abs(group_stats[5].first_bin) > 2**24 and group_stats[5].hist.sum() > 0


def test_a_group_counts_in_float64_once_bin_numbers_outgrow_float32() -> None:
    rng = np.random.default_rng(7)
    # a narrow range far from zero: its first bin is -(2**32 - 2**8), so its bin shift (2048 more) needs
    # 25 significant bits, which float32 does not have
    far = np.float32(-(2.0**15) + 2.0**-9) + np.float32(2.0**-9) * rng.integers(0, 5, size=64).astype(
        np.float32
    )
    far[0] = np.float32(-(2.0**15) + 2.0**-9)
    parts = [rng.normal(size=64).astype(np.float32), far.astype(np.float32)]
    group_stats, alone = [TensorStats(), TensorStats()], [TensorStats(), TensorStats()]
    group = StatsGroup(group_stats)
    for a, x in zip(alone, parts, strict=True):
        a.observe_summary(float(x.min()), float(x.max()), x.size, x)
    lo, hi = (
        np.array([x.min() for x in parts], dtype=np.float64),
        np.array([x.max() for x in parts], dtype=np.float64),
    )
    group.observe_summaries(lo, hi, np.array([64, 64]), np.concatenate(parts), np.array([64, 64]))
    assert group_stats[1].first_bin == -(2**32 - 2**8)
    assert all(_same(g, a) for g, a in zip(group_stats, alone, strict=True))
    # a grid rewritten in place (a range that moved) switches to float64 when it must
    small = StatsGroup([TensorStats(), TensorStats()])
    small.observe_summaries(
        lo[:1].repeat(2),
        hi[:1].repeat(2),
        np.array([64, 64]),
        np.concatenate([parts[0]] * 2),
        np.array([64, 64]),
    )
    assert small._grids is not None and small._grids[2].dtype == np.float32
    small.stats[1].first_bin = -(2**25) - 1  # (as if its range had moved there)
    small._rewrite(np.array([1]))
    shift = small._grids[2]
    assert shift.dtype == np.float64 and shift[64] == 2048 + 2**25 + 1


def test_a_group_of_more_bins_than_float32_counts_counts_every_tensor_exactly() -> None:
    # 8193 tensors x 2048 bins: bin numbers pass 2**24 although every shift is small
    n = 8193
    x = np.random.default_rng(0).random(64).astype(np.float32)
    x[0], x[1], x[2] = 0.0, 1.0, np.float32(0.99999994)  # the last bin too
    stats = [TensorStats() for _ in range(n)]
    group = StatsGroup(stats)
    group.observe_summaries(np.zeros(n), np.ones(n), np.full(n, 64), np.tile(x, n), np.full(n, 64))
    alone = TensorStats()
    alone.observe_summary(0.0, 1.0, 64, x)
    assert _same(stats[0], alone) and _same(stats[-1], alone)


def test_a_group_refuses_values_below_their_tensors_range() -> None:
    group = StatsGroup([TensorStats(), TensorStats()])
    with pytest.raises(ValueError, match="outside"):
        group.observe_summaries(
            np.array([0.0, 0.0]),
            np.array([1.0, 1.0]),
            np.array([2, 2]),
            np.array([-0.5, 0.5, 0.5, 0.5], dtype=np.float32),
            np.array([2, 2]),
        )


def test_a_group_takes_one_bin_count() -> None:
    with pytest.raises(ValueError):
        StatsGroup([TensorStats(), TensorStats(bins=16)])


@pytest.mark.parametrize("schema", ["asymmetric", "symmetric", "unsignedsymmetric"])
@pytest.mark.parametrize("bitwidth,steps", [(8, None), (16, None), (4, None), (8, (-127, 127))])
def test_schemas_encode_many_ranges_exactly_as_one_at_a_time(schema, bitwidth, steps) -> None:
    s = get_plugin_manager().schemas.get(schema)
    rng = np.random.default_rng(2)
    lo = np.concatenate(
        [-np.abs(rng.normal(size=200)) * 10 ** rng.uniform(-6, 3, 200), [0, 0, -np.inf, np.nan]]
    )
    hi = np.concatenate([np.abs(rng.normal(size=200)) * 10 ** rng.uniform(-6, 3, 200), [0, 1e-30, 3, np.inf]])
    lo[:50] = np.abs(lo[:50])  # non-negative ranges too (unsignedsymmetric's other branch)
    steps = steps if s.symmetric else None
    many = s.encode_many(lo, hi, bitwidth, steps=steps)
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        one = s.encode(float(a), float(b), bitwidth, steps=steps)
        assert many.scale[i] == one.scale and many.offset[i] == one.offset, (a, b)
        # the grid's ends (with restricted steps, the steps' ends rather than the storage type's)
        assert (many.qmin[i] + many.offset[i]) * many.scale[i] == one.min
        assert (many.qmax[i] + many.offset[i]) * many.scale[i] == one.max


@pytest.mark.parametrize(
    "schema,steps,lo,hi,want",
    [
        # QNN conventions: real = scale * (q + offset), zero exact; float32 scale arithmetic
        ("asymmetric", None, -1.0, 3.0, (float(np.float32(4) / np.float32(255)), -64, 0, 255, False, False)),
        ("symmetric", None, -1.0, 3.0, (3 / 127, 0, -128, 127, True, True)),
        ("symmetric", (-127, 127), -1.0, 3.0, (6 / 254, 0, -127, 127, True, True)),
        ("unsignedsymmetric", None, 0.0, 3.0, (3 / 255, 0, 0, 255, True, False)),
        ("unsignedsymmetric", None, -1.0, 3.0, (3 / 127, 0, -128, 127, True, True)),
    ],
)
def test_schemas_encode_each_range_by_the_qnn_conventions(schema, steps, lo, hi, want) -> None:
    s = get_plugin_manager().schemas.get(schema)
    scale, offset, qmin, qmax, symmetric, signed = want
    expected = Encoding(8, scale, offset, (offset + qmin) * scale, (offset + qmax) * scale, symmetric, signed)
    many = s.encode_each(np.array([lo, 0.0, lo]), np.array([hi, 0.0, hi]), 8, steps=steps)
    assert many[0] == many[2] == expected == s.encode(lo, hi, 8, steps=steps)
    # and in a batch, each range gets what it gets alone (a constant-zero range included)
    assert many == QuantizationSchema.encode_each(
        s, np.array([lo, 0.0, lo]), np.array([hi, 0.0, hi]), 8, steps=steps
    )


def test_a_schema_without_batched_encodings_encodes_each_range_alone() -> None:
    class Halves(QuantizationSchema):
        name, description, symmetric = "halves", "scale 0.5", False

        def encode(self, lo, hi, bitwidth, *, steps=None):
            return Encoding(bitwidth, 0.5, int(lo // 0.5), lo, hi)

    got = Halves().encode_each(np.array([-1.0, -2.0]), np.array([1.0, 3.0]), 8)
    assert got == [Encoding(8, 0.5, -2, -1.0, 1.0), Encoding(8, 0.5, -4, -2.0, 3.0)]
    with pytest.raises(TypeError, match="encode or encode_each"):

        class Nothing(QuantizationSchema):
            name, description, symmetric = "nothing", "no encodings", False


def test_subsample_strides_keep_at_most_about_the_budget() -> None:
    for size in [1, 7, 4096, 4097, 48 * 320 * 64, 256 * 120 * 120]:
        step = subsample_step(size, 4096)
        kept = -(-size // step)
        assert kept <= 4096 + 1 and (kept == size or kept >= 4096 / 2)


def test_workers_merge_into_exactly_the_single_pass_statistics() -> None:
    model = conv_net()
    data = samples(12)
    tensors = ["x", "c1", "r1", "c2", "a", "m"]
    one = collect_statistics(model, data, tensors, progress=False, workers=1)
    three = collect_statistics(model, data, tensors, progress=False, workers=3)
    for t in tensors:
        assert _same(one[t], three[t]), t
        assert one[t].hist.size == BINS and one[t].count == 12 * (3 if t == "x" else 4) * 64


def test_min_max_are_exact_and_histograms_see_every_tensor() -> None:
    model = conv_net()
    data = samples(5)
    stats = collect_statistics(model, data, ["x", "a"], progress=False, workers=2)
    xs = np.stack([d["x"] for d in data])
    assert stats["x"].min == float(xs.min()) and stats["x"].max == float(xs.max())
    assert stats["x"].hist.sum() == xs.size  # small tensors: the subsample is the whole tensor


def _dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    return m


def test_dynamic_and_unknown_shapes_take_the_generic_path() -> None:
    model = conv_net()
    data = samples(4)
    static = collect_statistics(model, data, ["x", "c1", "m"], progress=False, workers=1)
    dynamic = collect_statistics(_dynamic_batch(model), data, ["x", "c1", "m"], progress=False, workers=1)
    for t in ("x", "c1", "m"):
        assert _same(static[t], dynamic[t]), t
    # a tensor whose rank nothing knows (an op without shape inference): flattened in the graph
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    stats_model, names = statistics_model(m, ["x", "r"], histograms=True)
    assert all(isinstance(x, str) for x in names.sizes + names.lengths)
    x = np.linspace(-3, 5, 50000, dtype=np.float32).reshape(2, 25000)
    s = collect_statistics(m, [{"x": x}], ["x", "r"], progress=False)
    assert (s["r"].min, s["r"].max, s["r"].count) == (0.0, 5.0, 50000)
    assert 0 < s["r"].hist.sum() <= HISTOGRAM_SAMPLE + 1


def test_the_statistics_model_holds_each_constant_once() -> None:
    # hundreds of equal Slice starts/ends/axes would each be an initializer to load
    model = conv_net()
    tensors = ["x", "c1", "m"]
    stats_model, _ = statistics_model(model, tensors, histograms=True)
    own = [
        i for i in stats_model.graph.initializer if i.name not in {j.name for j in model.graph.initializer}
    ]
    values = [(i.data_type, tuple(i.dims), numpy_helper.to_array(i).tobytes()) for i in own]
    assert len(values) == len(set(values)) and 0 < len(own) < 4 * len(tensors)
    assert collect_statistics(model, samples(2), tensors, progress=False, workers=1)["c1"].hist.sum() > 0


def test_rearranged_tensors_take_their_inputs_encoding_without_being_observed() -> None:
    from opendlc.container import Container
    from opendlc.quant.api import quantize
    from opendlc.quant.options import QuantizerOptions

    q = quantize(
        Container(conv_net()),
        samples(6),
        QuantizerOptions(target_backend="CPU", act_quantizer_calibration="sqnr"),
        progress=False,
    )
    y, m = q.encodings["y"], q.encodings["m"]  # y = Reshape(m)
    assert y.encodings == m.encodings and y.source == "propagated" and m.source == "calibration"


def test_quantization_records_how_calibration_time_splits() -> None:
    from opendlc.container import Container
    from opendlc.quant.api import quantize
    from opendlc.quant.options import QuantizerOptions

    q = quantize(
        Container(conv_net()),
        samples(4),
        QuantizerOptions(target_backend="CPU", act_quantizer_calibration="mse"),
        progress=False,
    )
    seconds = q.encodings.meta["seconds"]
    observing, choosing = seconds["calibration: observing"], seconds["calibration: choosing ranges"]
    assert observing > 0 and choosing > 0
    assert observing + choosing == pytest.approx(seconds["calibration"], abs=0.002)  # (each rounded)


def test_the_number_of_calibration_sessions_can_be_set(monkeypatch) -> None:
    from opendlc.errors import UsageError
    from opendlc.quant.calibrate import calibration_workers

    monkeypatch.setenv("OPENDLC_CALIBRATION_WORKERS", "1")
    assert calibration_workers() == 1
    monkeypatch.setenv("OPENDLC_CALIBRATION_WORKERS", "two")
    with pytest.raises(UsageError, match="OPENDLC_CALIBRATION_WORKERS"):
        calibration_workers()
    monkeypatch.delenv("OPENDLC_CALIBRATION_WORKERS")
    assert 1 <= calibration_workers() <= 4


def test_a_sample_with_nan_is_observed_in_full_and_the_group_carries_on_exactly() -> None:
    """Tensors with NaN in a sample are observed whole, outside the group (their grid may move there);
    a later sample inside the earlier range must still land in the right bins."""
    model = conv_net()
    rng = np.random.default_rng(8)
    data = [{"x": (rng.normal(size=(1, 3, 8, 8)) * s).astype(np.float32)} for s in (3.0, 9.0, 1.0)]
    data[1]["x"][0, 0, 0, :3] = np.nan
    stats = collect_statistics(model, data, ["x"], progress=False, workers=1)
    expected = TensorStats()
    for d in data:  # the input is small: its subsample is all of it, so the two must agree
        expected.observe(d["x"])
    assert _same(stats["x"], expected) and stats["x"].nonfinite == 3
