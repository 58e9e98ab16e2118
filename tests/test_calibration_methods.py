"""Calibration methods (plugins) and the public search building blocks they share."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest

from opendlc.calibration import CalibrationOptions
from opendlc.calibration_search import (
    CandidateGrids,
    Intervals,
    expected_noise,
    kl_divergence,
    quantile,
    search_range,
    shrink_factors,
)
from opendlc.observers import TensorStats
from opendlc.plugin_manager import get_plugin_manager

NEW_METHODS = ["sqnr", "enhanced", "entropy", "mse", "percentile", "adjusted"]
METHODS = ["min-max", *NEW_METHODS]
SCHEMAS = ["asymmetric", "symmetric", "unsignedsymmetric"]
SHAPES = ["gaussian", "laplacian", "relu", "bimodal"]
OPTIONS = CalibrationOptions()


@functools.cache
def data(shape: str, outliers: bool = True, n: int = 50_000, seed: int = 0) -> np.ndarray:
    """Synthetic activations; 'outliers': 1% of the values drawn 10x wider than the body."""
    rng = np.random.default_rng(seed)
    if shape in ("gaussian", "relu"):
        body = rng.normal(size=n)
    elif shape == "laplacian":
        body = rng.laplace(size=n)
    else:
        body = np.concatenate([rng.normal(-3.0, 0.5, n // 2), rng.normal(5.0, 1.0, n - n // 2)])
    x = body
    if outliers:
        x = np.concatenate([body, rng.normal(scale=10 * body.std(), size=n // 100)])
    if shape == "relu":
        x = np.maximum(x, 0.0)
    return rng.permutation(x).astype(np.float32)


@functools.cache
def stats_of(shape: str, outliers: bool = True) -> TensorStats:
    return TensorStats.of(data(shape, outliers))


def method(name: str):
    return get_plugin_manager().calibration_methods.get(name)


def schema(name: str):
    return get_plugin_manager().schemas.get(name)


def choose(name: str, stats: TensorStats, schema_name: str, bits: int, options=OPTIONS) -> tuple[float, ...]:
    return method(name).choose_range(stats, bitwidth=bits, schema=schema(schema_name), options=options)


def qdq_mse(x: np.ndarray, schema_name: str, bits: int, lo: float, hi: float, steps=None) -> float:
    enc = schema(schema_name).encode(lo, hi, bits, steps=steps)
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean((enc.quantize_dequantize(x).astype(np.float64) - x) ** 2))


# ---- registration --------------------------------------------------------------------------------
def test_every_method_is_a_registered_plugin() -> None:
    from importlib.metadata import entry_points

    registry = get_plugin_manager().calibration_methods
    eps = {ep.name: ep.value for ep in entry_points(group="opendlc.plugins")}
    for name in NEW_METHODS:
        assert name in registry
        assert method(name).description
        assert eps[f"calibration_{name}"] == f"opendlc.plugins.calibration.{name}"


def assert_quantile(value: float, x: np.ndarray, q: float, width: float) -> None:
    """``value`` is the q-quantile of ``x`` to within a bin: between the order statistics around rank
    q*N (np.percentile interpolates across gaps of the sparse tails that can be wider than a bin)."""
    xs = np.sort(np.asarray(x, dtype=np.float64))
    rank = q * xs.size
    below = xs[max(math.floor(rank) - 1, 0)]
    above = xs[min(math.ceil(rank), xs.size - 1)]
    assert below - width <= value <= above + width, (value, below, above, width)


# ---- the shared building blocks ------------------------------------------------------------------
@pytest.mark.parametrize("schema_name", SCHEMAS)
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_expected_noise_is_the_quantize_dequantize_error(schema_name: str, bits: int) -> None:
    x = data("laplacian")
    stats = stats_of("laplacian")
    factors = np.array([1.0, 0.5, 0.2, 0.1, 0.05])
    grids = CandidateGrids.from_ranges(schema(schema_name), bits, stats.min * factors, stats.max * factors)
    ranges = zip(grids.lo, grids.hi, strict=True)
    true = np.array([qdq_mse(x, schema_name, bits, lo, hi) for lo, hi in ranges])
    edges = expected_noise(stats, grids, method="edges") / x.size
    np.testing.assert_allclose(edges, true, rtol=0.01)
    if bits < 16:  # the other exact evaluation of the same model agrees to rounding
        cells = expected_noise(stats, grids, method="cells") / x.size
        np.testing.assert_allclose(cells, edges, rtol=1e-7)


def test_clip_weight_scales_only_the_clipping_error() -> None:
    stats = stats_of("gaussian")
    lo, hi = 1.1 * stats.min, 1.1 * stats.max
    grids = CandidateGrids.from_ranges(schema("asymmetric"), 8, [lo, -1.0], [hi, 1.0])
    plain = expected_noise(stats, grids, clip_weight=1.0)
    weighted = expected_noise(stats, grids, clip_weight=3.0)
    assert weighted[0] == pytest.approx(plain[0], rel=1e-9)  # a grid wider than the data clips nothing
    assert weighted[1] > 2.0 * plain[1]  # clipping dominates a [-1, 1] grid on N(0, 1) + outliers


def _kl_reference(stats: TensorStats, scale: float, first: int, last: int) -> float:
    """Literal TensorRT-style construction of P and Q for one grid, with loops."""
    n = stats.hist.astype(np.float64).copy()
    zero = -stats.first_bin
    if 0 <= zero < n.size:
        n[zero] = 0.0
    centres = (stats.first_bin + np.arange(n.size) + 0.5) * stats.width
    covered = np.nonzero((centres >= (first - 0.5) * scale) & (centres < (last + 0.5) * scale))[0]
    a, b = covered[0], covered[-1]
    sliced = n[a : b + 1].copy()
    p = sliced.copy()
    p[0] += n[:a].sum()
    p[-1] += n[b + 1 :].sum()
    cell = np.clip(np.round(centres[a : b + 1] / scale), first, last)
    q = np.zeros_like(p)
    for c in np.unique(cell):
        members = cell == c
        nonzero = members & (p > 0)
        if nonzero.any():
            q[nonzero] = max(sliced[members].sum(), 1e-4 * nonzero.sum()) / nonzero.sum()
    pn, qn = p / p.sum(), q / sliced.sum()
    mask = pn > 0
    return float(np.sum(pn[mask] * np.log(pn[mask] / qn[mask])))


@pytest.mark.parametrize("shape", ["laplacian", "relu", "bimodal"])
@pytest.mark.parametrize("schema_name", ["asymmetric", "symmetric"])
def test_kl_divergence_matches_a_literal_implementation(shape: str, schema_name: str) -> None:
    stats = stats_of(shape)
    factors = np.array([1.0, 0.6, 0.35, 0.25])
    lo0, hi0 = min(stats.min, 0.0), max(stats.max, 0.0)
    grids = CandidateGrids.from_ranges(schema(schema_name), 8, lo0 * factors, hi0 * factors)
    fast = kl_divergence(stats, grids)
    for i in range(len(grids)):
        if grids.scale[i] < stats.width:
            assert fast[i] == np.inf  # finer than a bin: not judged
            continue
        ref = _kl_reference(stats, grids.scale[i], int(grids.first[i]), int(grids.last[i]))
        assert fast[i] == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_search_reaches_the_brute_force_optimum() -> None:
    stats = stats_of("laplacian")
    intervals = Intervals.of(stats)
    sch = schema("asymmetric")

    def cost(g: CandidateGrids) -> np.ndarray:
        return expected_noise(intervals, g)

    lo, hi = search_range(stats, sch, 8, cost)
    found = cost(CandidateGrids.from_ranges(sch, 8, [lo], [hi]))[0]
    f = np.geomspace(1.0, 2.0**-8, 60)
    a, b = (m.ravel() for m in np.meshgrid(f, f))
    brute = cost(CandidateGrids.from_ranges(sch, 8, stats.min * a, stats.max * b)).min()
    assert found <= brute * 1.002


@pytest.mark.parametrize("absolute", [False, True])
@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.9, 0.999, 1.0])
def test_quantile_within_a_bin(absolute: bool, q: float) -> None:
    x = data("bimodal").astype(np.float64)
    stats = stats_of("bimodal")
    assert_quantile(quantile(stats, q, absolute=absolute), np.abs(x) if absolute else x, q, stats.width)


# ---- the methods ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("schema_name", SCHEMAS)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("name", ["sqnr", "mse", "enhanced"])
def test_searching_methods_beat_min_max_with_outliers(name: str, bits: int, schema_name: str, shape: str):
    x, stats = data(shape), stats_of(shape)
    ours = qdq_mse(x, schema_name, bits, *choose(name, stats, schema_name, bits))
    assert ours < qdq_mse(x, schema_name, bits, stats.min, stats.max)


@pytest.mark.parametrize("shape", ["gaussian", "laplacian", "bimodal"])
@pytest.mark.parametrize("schema_name", SCHEMAS)
def test_entropy_beats_min_max_with_outliers_at_4_bits(schema_name: str, shape: str) -> None:
    # KL divergence rewards resolving the bulk and barely notices rare far values, so (like TensorRT's
    # own calibrator) it clips them hard: at 8 bits, or on one-sided data, that can cost more squared
    # error than min-max.  Where clipping is what the data needs -- 4 bits, two-sided tails -- it wins.
    x, stats = data(shape), stats_of(shape)
    ours = qdq_mse(x, schema_name, 4, *choose("entropy", stats, schema_name, 4))
    assert ours < qdq_mse(x, schema_name, 4, stats.min, stats.max)


@pytest.mark.parametrize("name", ["sqnr", "mse", "enhanced", "entropy"])
@pytest.mark.parametrize("schema_name", SCHEMAS)
def test_searching_methods_never_lose_to_min_max_at_16_bits(name: str, schema_name: str) -> None:
    x, stats = data("laplacian"), stats_of("laplacian")
    ours = qdq_mse(x, schema_name, 16, *choose(name, stats, schema_name, 16))
    assert ours <= qdq_mse(x, schema_name, 16, stats.min, stats.max) * 1.001


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [90.0, 99.0, 99.99, 100.0])
def test_percentile_is_the_quantile_within_a_bin(shape: str, p: float) -> None:
    x, stats = data(shape).astype(np.float64), stats_of(shape)
    options = CalibrationOptions(percentile=p)
    lo, hi = choose("percentile", stats, "asymmetric", 8, options)
    assert_quantile(lo, x, 1.0 - p / 100.0, stats.width)
    assert_quantile(hi, x, p / 100.0, stats.width)
    for name in ("symmetric", "unsignedsymmetric"):
        lo, hi = choose("percentile", stats, name, 8, options)
        assert_quantile(max(-lo, hi), np.abs(x), p / 100.0, stats.width)
        assert stats.min <= lo <= hi <= stats.max  # one-sided data stays one-sided
    if p == 100.0:
        assert choose("percentile", stats, "asymmetric", 8, options) == (stats.min, stats.max)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("schema_name", SCHEMAS)
@pytest.mark.parametrize("bits", [4, 8, 16])
@pytest.mark.parametrize("name", METHODS)
def test_every_method_gives_a_valid_encoding(name: str, bits: int, schema_name: str, shape: str) -> None:
    stats = stats_of(shape)
    lo, hi = choose(name, stats, schema_name, bits)
    assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi
    enc = schema(schema_name).encode(lo, hi, bits)
    assert math.isfinite(enc.scale) and enc.scale > 0
    assert enc.min <= 0.0 <= enc.max
    lo0, hi0 = min(stats.min, 0.0), max(stats.max, 0.0)
    if name == "adjusted":  # widens, by at most a couple of steps
        slack = 2 * schema(schema_name).encode(lo0, hi0, bits).scale
        assert lo0 - slack <= lo and hi <= hi0 + slack
    else:
        assert lo0 <= lo and hi <= hi0


def _degenerate_cases() -> dict[str, TensorStats]:
    rng = np.random.default_rng(1)
    cases = {
        "empty": TensorStats(),
        "nan-inf-only": TensorStats.of(np.array([np.nan, np.inf, -np.inf, np.nan])),
        "zeros": TensorStats.of(np.zeros(1000)),
        "constant-positive": TensorStats.of(np.full(1000, 3.5)),
        "constant-negative": TensorStats.of(np.full(10, -2.0)),
        "single-value": TensorStats.of(np.array([0.25])),
        "two-values": TensorStats.of(np.array([-1.0, 3.0])),
        "tiny": TensorStats.of(rng.normal(size=1000) * 1e-30),
        "huge": TensorStats.of(rng.normal(size=1000) * 1e30),
        "with-nan-and-inf": TensorStats.of(np.concatenate([rng.normal(size=1000), [np.nan, np.inf]])),
        "few-weights": TensorStats.of(rng.normal(size=9)),
    }
    return cases


@pytest.mark.parametrize("name", METHODS)
def test_statistics_without_histogram_give_min_max(name: str) -> None:
    stats = TensorStats.of(np.array([1.0, 2.0, -3.0]), bins=0)  # what min-max-only observers keep
    for schema_name in SCHEMAS:
        assert choose(name, stats, schema_name, 8) == (-3.0, 2.0)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("case", list(_degenerate_cases()))
@pytest.mark.parametrize("name", METHODS)
def test_degenerate_statistics_give_finite_encodings(name: str, case: str) -> None:
    stats = _degenerate_cases()[case]
    for schema_name in SCHEMAS:
        for bits in (4, 8, 16):
            lo, hi = choose(name, stats, schema_name, bits)
            assert math.isfinite(lo) and math.isfinite(hi), (schema_name, bits)
            enc = schema(schema_name).encode(lo, hi, bits)
            assert math.isfinite(enc.scale) and enc.scale > 0 and enc.min <= 0.0 <= enc.max


# ---- properties: mergeable, order- and scale-independent ------------------------------------------
@functools.cache
def _halves_and_whole(shape: str) -> tuple[TensorStats, TensorStats, TensorStats]:
    x = data(shape)
    a, b = x[: x.size // 3] * 0.25, x[x.size // 3 :]  # different ranges, so merging re-bins
    whole = TensorStats.of(np.concatenate([a, b]))
    merged = TensorStats.of(a).merge(TensorStats.of(b))
    streamed = TensorStats()
    for chunk in np.array_split(np.concatenate([b, a]), 7):
        streamed.observe(chunk)
    return whole, merged, streamed


@pytest.mark.parametrize("shape", ["laplacian", "relu"])
@pytest.mark.parametrize("name", METHODS)
def test_merged_statistics_give_the_same_range(name: str, shape: str) -> None:
    whole, merged, streamed = _halves_and_whole(shape)
    for other in (merged, streamed):
        np.testing.assert_array_equal(other.hist, whole.hist)
        assert (other.min, other.max, other.width_exp) == (whole.min, whole.max, whole.width_exp)
    for schema_name in SCHEMAS:
        for bits in (4, 8, 16):
            expected = choose(name, whole, schema_name, bits)
            assert choose(name, merged, schema_name, bits) == expected
            assert choose(name, streamed, schema_name, bits) == expected


@pytest.mark.parametrize("name", METHODS)
def test_ranges_scale_with_the_data(name: str) -> None:
    # Scaling by a power of two moves every bin exactly: a method must scale its range exactly too.
    x = data("laplacian")
    for schema_name in SCHEMAS:
        lo, hi = choose(name, TensorStats.of(x), schema_name, 8)
        lo4, hi4 = choose(name, TensorStats.of(x * 4.0), schema_name, 8)
        assert (lo4, hi4) == (lo * 4.0, hi * 4.0)


@pytest.mark.parametrize("name", ["min-max", "percentile", "sqnr", "mse", "enhanced", "adjusted"])
def test_mirrored_data_gets_the_mirrored_choice(name: str) -> None:
    # Nothing may depend on which end of the histogram comes first.  The asymmetric grid is
    # mirror-symmetric (the signed one is not: -128..127), so -x must cost what x costs.
    x = data("laplacian")
    stats, mirrored = TensorStats.of(x), TensorStats.of(-x)
    lo, hi = choose(name, stats, "asymmetric", 8)
    mlo, mhi = choose(name, mirrored, "asymmetric", 8)
    if name in ("min-max", "percentile"):
        assert (mlo, mhi) == pytest.approx((-hi, -lo), rel=1e-9)
    weight = 3.0 if name in ("sqnr", "enhanced") else 1.0
    ours = CandidateGrids.from_ranges(schema("asymmetric"), 8, [lo], [hi])
    theirs = CandidateGrids.from_ranges(schema("asymmetric"), 8, [mlo], [mhi])
    assert expected_noise(mirrored, theirs, clip_weight=weight)[0] == pytest.approx(
        expected_noise(stats, ours, clip_weight=weight)[0], rel=1e-3
    )


def test_shrink_factors_start_at_the_full_range() -> None:
    f = shrink_factors()
    assert f[0] == 1.0 and np.all(np.diff(f) < 0) and f[-1] == pytest.approx(2.0**-12)


# ---- method specifics ----------------------------------------------------------------------------
def test_search_scores_the_restricted_steps_grid() -> None:
    x, stats = data("laplacian"), stats_of("laplacian")
    steps = (-7, 7)  # --restrict_quantization_steps: 15 levels at 8 bits
    with_steps = choose("mse", stats, "symmetric", 8, CalibrationOptions(steps=steps))
    without = choose("mse", stats, "symmetric", 8)
    err = qdq_mse(x, "symmetric", 8, *with_steps, steps=steps)
    assert err < qdq_mse(x, "symmetric", 8, stats.min, stats.max, steps=steps)
    assert err < qdq_mse(x, "symmetric", 8, *without, steps=steps)


def test_adjusted_keeps_both_extremes_on_the_grid() -> None:
    # min-max rounds the offset to keep zero exact, which can leave an extreme outside the grid
    rng = np.random.default_rng(3)
    w = np.concatenate([rng.normal(size=500) * 0.2, [-0.3013, 1.0]])
    stats = TensorStats.of(w)
    minmax = schema("asymmetric").encode(stats.min, stats.max, 8)
    assert minmax.min > stats.min or minmax.max < stats.max  # the case the quantizer is for
    lo, hi = choose("adjusted", stats, "asymmetric", 8)
    enc = schema("asymmetric").encode(lo, hi, 8)
    assert enc.min <= stats.min and enc.max >= stats.max
    on_grid = min(abs(enc.min - stats.min), abs(enc.max - stats.max))
    assert on_grid <= 1e-5 * enc.scale * 255  # one extreme is a grid point
    assert enc.scale <= minmax.scale * 1.02  # widened a little, not much
    for name in ("symmetric", "unsignedsymmetric"):  # symmetric grids already cover the extremes
        assert choose("adjusted", stats, name, 8) == (stats.min, stats.max)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [4, 8])
def test_enhanced_finds_the_best_of_the_tf_enhanced_candidates(bits: int, shape: str) -> None:
    from opendlc.plugins.calibration.enhanced import CLIP_WEIGHT, SYMMETRIC_FRACTIONS, candidate_lattice

    stats = stats_of(shape)
    lo0, hi0 = min(stats.min, 0.0), max(stats.max, 0.0)
    for schema_name in SCHEMAS:
        sch = schema(schema_name)
        if sch.symmetric or lo0 == 0.0:
            los, his = lo0 * SYMMETRIC_FRACTIONS, hi0 * SYMMETRIC_FRACTIONS
        else:
            lat_lo, lat_hi, usable = candidate_lattice(lo0, hi0, 2**bits)
            los, his = lat_lo[usable], lat_hi[usable]
        every = CandidateGrids.from_ranges(sch, bits, [lo0, *los], [hi0, *his])
        exhaustive = expected_noise(stats, every, clip_weight=CLIP_WEIGHT).min()
        lo, hi = choose("enhanced", stats, schema_name, bits)
        chosen = CandidateGrids.from_ranges(sch, bits, [lo], [hi])
        assert expected_noise(stats, chosen, clip_weight=CLIP_WEIGHT)[0] <= exhaustive * 1.01, schema_name


def test_enhanced_is_never_worse_than_min_max_in_its_own_objective() -> None:
    for shape in SHAPES:
        stats = stats_of(shape)
        for schema_name in SCHEMAS:
            lo, hi = choose("enhanced", stats, schema_name, 8)
            grids = CandidateGrids.from_ranges(schema(schema_name), 8, [lo, stats.min], [hi, stats.max])
            noise = expected_noise(stats, grids, clip_weight=3.0)
            assert noise[0] <= noise[1] * (1 + 1e-12)


# ---- many tensors at once ------------------------------------------------------------------------
def _varied_stats() -> list[TensorStats]:
    """One-sided, symmetric, skewed, spiky, point-mass, constant and empty statistics."""
    rng = np.random.default_rng(7)
    arrays = [
        data("gaussian"),
        data("laplacian", outliers=False),
        data("relu"),
        data("bimodal"),
        -data("relu"),  # one-sided, negative
        np.minimum(np.maximum(rng.normal(size=5000), 0.0), 6.0),  # ReLU6: point masses at 0 and 6
        rng.normal(3.0, 0.1, size=2000),  # far from zero
        np.round(rng.normal(size=3000) * 4) / 4,  # values on a few points only
        rng.uniform(-1.0, 2.0, size=300),  # few values: few occupied bins
        np.full(100, 2.5),  # constant
    ]
    stats = [TensorStats.of(a) for a in arrays]
    stats.append(TensorStats())  # empty
    stats.append(TensorStats.of(np.array([np.nan, np.inf])))  # non-finite only
    return stats


@pytest.mark.parametrize("name", ["sqnr", "mse", "entropy", "min-max", "percentile"])
@pytest.mark.parametrize("schema_name", SCHEMAS)
@pytest.mark.parametrize("bits", [8, 16])
def test_choose_ranges_equals_choose_range_exactly(name: str, schema_name: str, bits: int) -> None:
    stats = _varied_stats()
    m, sch = method(name), schema(schema_name)
    for options in (OPTIONS, CalibrationOptions(steps=(-100, 100))):
        if options.steps is not None and not sch.symmetric:
            continue
        one = [m.choose_range(s, bitwidth=bits, schema=sch, options=options) for s in stats]
        many = m.choose_ranges(stats, bitwidth=bits, schema=sch, options=options)
        assert many == one  # exactly: the batched search scores every candidate identically
        assert m.choose_ranges([], bitwidth=bits, schema=sch, options=options) == []


def test_noise_of_many_matches_expected_noise_exactly() -> None:
    from opendlc.calibration_search import GridBatch, NoiseOfMany

    stats = [s for s in _varied_stats() if not s.empty and s.min < s.max]
    intervals = [Intervals.of(s) for s in stats]
    sch = schema("asymmetric")
    rng = np.random.default_rng(3)
    for bits in (4, 8, 16):
        for clip_weight in (1.0, 3.0):
            parts = []
            for s in stats:
                f = rng.uniform(0.01, 1.0, size=(2, 13))
                parts.append(
                    CandidateGrids.from_ranges(sch, bits, min(s.min, 0.0) * f[0], max(s.max, 0.0) * f[1])
                )
            grids = CandidateGrids(
                *(
                    np.concatenate([getattr(p, k) for p in parts])
                    for k in ("lo", "hi", "scale", "first", "last")
                )
            )
            starts = np.arange(len(parts) + 1) * 13
            batch = GridBatch(grids, starts, np.arange(len(parts)))
            got = NoiseOfMany(intervals, clip_weight=clip_weight)(batch)
            pairs = zip(intervals, parts, strict=True)
            want = np.concatenate([expected_noise(iv, p, clip_weight=clip_weight) for iv, p in pairs])
            assert np.array_equal(got, want)


def test_noise_for_a_search_scores_in_full_whatever_can_be_a_tensors_best() -> None:
    # best_only: the numbers given are exact, each tensor's cheapest candidate is among them, and a
    # candidate given inf is dearer than that cheapest one
    from opendlc.calibration_search import GridBatch, NoiseOfMany, search_ranges

    stats = [s for s in _varied_stats() if not s.empty and s.min < s.max]
    intervals = [Intervals.of(s) for s in stats]
    sch = schema("asymmetric")
    rng = np.random.default_rng(4)
    parts = []
    for s in stats:
        f = np.concatenate([rng.uniform(0.9, 1.0, size=(2, 8)), rng.uniform(0.01, 0.5, size=(2, 8))], axis=1)
        parts.append(CandidateGrids.from_ranges(sch, 8, min(s.min, 0.0) * f[0], max(s.max, 0.0) * f[1]))
    grids = CandidateGrids(
        *(np.concatenate([getattr(p, k) for p in parts]) for k in ("lo", "hi", "scale", "first", "last"))
    )
    starts = np.arange(len(parts) + 1) * 16
    batch = GridBatch(grids, starts, np.arange(len(parts)))
    exact = NoiseOfMany(intervals, clip_weight=3.0)(batch)
    best_only = NoiseOfMany(intervals, clip_weight=3.0, best_only=True)(batch)
    kept = np.isfinite(best_only)
    assert np.array_equal(best_only[kept], exact[kept]) and not kept.all()  # some were ruled out
    for a, b in itertools.pairwise(starts):
        assert np.argmin(best_only[a:b]) == np.argmin(exact[a:b])
        assert np.all(exact[a:b][~kept[a:b]] > exact[a:b].min())
    # and a whole search with it chooses the ranges a search scoring everything chooses
    for clip_weight in (1.0, 3.0):
        full = search_ranges(stats, sch, 8, NoiseOfMany(intervals, clip_weight=clip_weight))
        pruned = search_ranges(stats, sch, 8, NoiseOfMany(intervals, clip_weight=clip_weight, best_only=True))
        assert pruned == full


def test_noise_of_intervals_off_the_bin_grid() -> None:
    # Intervals that are not bins of a grid (third-party methods may build them) are looked up by
    # bisection instead of arithmetic: the same noise, alone or batched with on-grid ones.
    from opendlc.calibration_search import GridBatch, NoiseOfMany

    stats = stats_of("laplacian")
    iv = Intervals.of(stats)
    off = Intervals(iv.left, iv.right, iv.count)  # no bin information
    lo0, hi0 = min(stats.min, 0.0), max(stats.max, 0.0)
    f = np.geomspace(1.0, 0.02, 9)
    grids = CandidateGrids.from_ranges(schema("asymmetric"), 4, lo0 * f, hi0 * f)  # "auto": cells
    for method in ("cells", "edges"):
        np.testing.assert_allclose(
            expected_noise(off, grids, method=method), expected_noise(iv, grids, method=method), rtol=1e-9
        )
    both = CandidateGrids(
        *(np.concatenate([getattr(grids, k)] * 2) for k in ("lo", "hi", "scale", "first", "last"))
    )
    batch = GridBatch(both, np.array([0, len(grids), 2 * len(grids)]), np.array([0, 1]))
    got = NoiseOfMany([iv, off], clip_weight=3.0)(batch)
    want = np.concatenate([expected_noise(v, grids, clip_weight=3.0) for v in (iv, off)])
    assert np.array_equal(got, want)


def test_kl_of_many_matches_kl_divergence_exactly() -> None:
    from opendlc.calibration_search import GridBatch, KlOfMany

    stats = [s for s in _varied_stats() if not s.empty and s.min < s.max]
    rng = np.random.default_rng(5)
    for schema_name in ("asymmetric", "symmetric"):
        for bits in (4, 8):
            parts = []
            for s in stats:
                f = rng.uniform(0.01, 1.0, size=(2, 11))
                lo, hi = min(s.min, 0.0) * f[0], max(s.max, 0.0) * f[1]
                parts.append(CandidateGrids.from_ranges(schema(schema_name), bits, lo, hi))
            fields = ("lo", "hi", "scale", "first", "last")
            order = rng.permutation(len(parts))  # any tensor order, as a lockstep round may have
            starts = np.concatenate(([0], np.cumsum([len(parts[i]) for i in order])))
            shuffled = CandidateGrids(
                *(np.concatenate([getattr(parts[i], k) for i in order]) for k in fields)
            )
            got = KlOfMany(stats)(GridBatch(shuffled, starts, order))
            want = np.concatenate([kl_divergence(stats[i], parts[i]) for i in order])
            assert np.isfinite(want).sum() > len(parts)  # most tensors are judged
            assert np.array_equal(got, want)


def test_a_method_implements_one_of_choose_range_and_choose_ranges() -> None:
    from opendlc.calibration import CalibrationMethod, CalibrationOptions

    class Whole(CalibrationMethod):
        name, description = "whole-list", "the first tensor's range for all"

        def choose_ranges(self, stats, *, bitwidth, schema, options):
            return [(stats[0].min, stats[0].max)] * len(stats)

    s = TensorStats.of(np.array([-1.0, 2.0]))
    got = Whole().choose_range(s, bitwidth=8, schema=schema("asymmetric"), options=CalibrationOptions())
    assert got == (-1.0, 2.0)
    with pytest.raises(TypeError, match="choose_range or choose_ranges"):

        class Neither(CalibrationMethod):
            name, description = "neither", "no range at all"
