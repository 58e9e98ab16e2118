"""Building blocks for calibration methods that search for a range (public: third-party methods use them).

A searching method proposes candidate ranges, lets the schema turn every one into the grid it would
really use (:class:`CandidateGrids` -- scale, offset and integer limits, so offset rounding and the
zero-point constraint are part of what is scored), scores all candidates at once against the histogram
(:func:`expected_noise`, :func:`kl_divergence`) and keeps the best (:func:`search_range`).  The
expected-noise evaluation and its histogram model live in :mod:`opendlc.calibration_noise`, the KL
divergence in :mod:`opendlc.calibration_kl`; both are re-exported here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import numpy as np

from opendlc.calibration import CalibrationMethod, CalibrationOptions
from opendlc.calibration_kl import KlOfMany, kl_divergence
from opendlc.calibration_noise import WIDE_BIN_STEPS as WIDE_BIN_STEPS  # (was defined here)
from opendlc.calibration_noise import Intervals, NoiseOfMany, expected_noise
from opendlc.observers import TensorStats
from opendlc.schemas import QuantizationSchema

__all__ = [
    "MinimumNoiseMethod",
    "CandidateGrids",
    "GridBatch",
    "Intervals",
    "KlOfMany",
    "expected_noise",
    "kl_divergence",
    "minimum_noise_range",
    "minimum_noise_ranges",
    "NoiseOfMany",
    "quantile",
    "search_range",
    "search_ranges",
    "shrink_factors",
    "trivial_range",
]


# ---- candidate grids -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CandidateGrids:
    """Candidate ranges and the grids the schema makes of them (one entry per candidate).

    Grid points are ``scale * k`` for integers ``k`` in ``[first, last]`` (``first = qmin + offset``,
    ``last = qmax + offset``): QNN's ``real = scale * (q + offset)`` with integer offset.
    """

    lo: np.ndarray  # the range handed to the schema
    hi: np.ndarray
    scale: np.ndarray
    first: np.ndarray
    last: np.ndarray

    @classmethod
    def from_ranges(
        cls,
        schema: QuantizationSchema,
        bitwidth: int,
        lo: Sequence[float] | np.ndarray,
        hi: Sequence[float] | np.ndarray,
        *,
        steps: tuple[int, int] | None = None,
    ) -> CandidateGrids:
        lo = np.asarray(lo, dtype=np.float64)
        hi = np.asarray(hi, dtype=np.float64)
        # The schema encodes every candidate: whatever rounding it does is what gets scored.
        r = schema.encode_many(lo, hi, bitwidth, steps=steps if schema.symmetric else None)
        scale = r.scale.astype(np.float64)
        first = (r.qmin + r.offset).astype(np.float64)
        last = (r.qmax + r.offset).astype(np.float64)
        return cls(lo, hi, scale, first, last)

    def __len__(self) -> int:
        return int(self.scale.size)


# ---- quantiles -----------------------------------------------------------------------------------
def quantile(stats: TensorStats, q: float, *, absolute: bool = False) -> float:
    """The ``q`` quantile (0..1) of the values, or of their magnitudes, interpolated within a bin."""
    if stats.empty:
        return 0.0
    iv = Intervals.of(stats, absolute=absolute)
    if iv.count.size == 0:
        raise ValueError("these statistics hold no histogram (observed with bins=0): no quantiles")
    cum = np.cumsum(iv.count)
    target = min(max(q, 0.0), 1.0) * cum[-1]
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, cum.size - 1)
    below = cum[i - 1] if i > 0 else 0.0
    frac = (target - below) / iv.count[i]
    return float(iv.left[i] + min(max(frac, 0.0), 1.0) * (iv.right[i] - iv.left[i]))


# ---- the search ----------------------------------------------------------------------------------
def trivial_range(stats: TensorStats) -> tuple[float, float] | None:
    """The range when there is nothing to search: no finite values, or a single value."""
    if stats.empty:
        return 0.0, 0.0
    if stats.min == stats.max or not np.any(stats.hist):
        return float(stats.min), float(stats.max)
    return None


def shrink_factors(smallest: float = 2.0**-12, ratio: float = 2.0) -> np.ndarray:
    """Factors 1, 1/ratio, 1/ratio^2, ... down to ``smallest`` (how far a search may shrink a range)."""
    count = int(math.floor(math.log(1.0 / smallest) / math.log(ratio) + 1e-9)) + 1
    return ratio ** -np.arange(count, dtype=np.float64)


Cost = Callable[[CandidateGrids], np.ndarray]


@dataclass(frozen=True)
class GridBatch:
    """Candidate grids of several tensors at once: the ``i``-th tensor of the batch is number
    ``tensors[i]`` of the searched list and owns rows ``starts[i]:starts[i + 1]`` of ``grids``."""

    grids: CandidateGrids
    starts: np.ndarray  # (len(tensors) + 1,) row offsets
    tensors: np.ndarray

    def rows(self, i: int) -> CandidateGrids:
        """Tensor ``i``'s candidates alone."""
        s, e = int(self.starts[i]), int(self.starts[i + 1])
        g = self.grids
        return CandidateGrids(g.lo[s:e], g.hi[s:e], g.scale[s:e], g.first[s:e], g.last[s:e])


BatchCost = Callable[[GridBatch], np.ndarray]

# Local refinement steps (ratio, candidates each side) after the octave sweeps.
_REFINE_1D = ((2.0**0.25, 3), (2.0**0.0625, 2), (2.0**0.015625, 2))
_REFINE_2D = ((2.0**0.25, 2), (2.0**0.0625, 2), (2.0**0.015625, 1))


@functools.cache
def _powers(ratio: float, n: int) -> np.ndarray:
    powers = ratio ** np.arange(n, -n - 1, -1, dtype=np.float64)
    powers.flags.writeable = False
    return powers


def _around(x: float, ratio: float, n: int) -> np.ndarray:  # x * ratio^k, |k| <= n, widest first
    return np.minimum(x * _powers(ratio, n), 1.0)


# A search proposes factor pairs (a, b) -- candidate range [lo0 * a, hi0 * b] -- and is sent the cost of
# each; it returns the chosen pair.  Written as a generator so that many tensors' searches can run in
# lockstep, their candidates encoded and scored together.
_Search = Generator[tuple[np.ndarray, np.ndarray], np.ndarray, tuple[float, float]]


def _search_factors(one_factor: bool, coarse: np.ndarray) -> _Search:
    """Candidates shrink the observed range towards zero: both ends by one factor (``one_factor``),
    each end by its own otherwise (coordinate sweeps over ``coarse``, then local refinement).  Ties
    keep the first candidate, which is the widest."""
    c = yield coarse, coarse
    f = float(coarse[int(np.argmin(c))])
    if one_factor:
        for ratio, n in _REFINE_1D:  # between coarse neighbours
            k = _around(f, ratio, n)
            c = yield k, k
            f = float(k[int(np.argmin(c))])
        return f, f
    # Coordinate sweeps from the best joint shrink (the two clipping costs interact only through the
    # step), then local 2-D refinement.
    a = b = f
    ones = np.ones_like(coarse)
    for _ in range(2):
        c = yield a * ones, coarse
        b = float(coarse[int(np.argmin(c))])
        c = yield coarse, b * ones
        a = float(coarse[int(np.argmin(c))])
    for ratio, n in _REFINE_2D:
        ka, kb = _around(a, ratio, n), _around(b, ratio, n)
        pa, pb = np.repeat(ka, kb.size), np.tile(kb, ka.size)  # the (ka x kb) grid, row-major
        c = yield pa, pb
        i = int(np.argmin(c))
        a, b = float(pa[i]), float(pb[i])
    return a, b


def search_range(
    stats: TensorStats,
    schema: QuantizationSchema,
    bitwidth: int,
    cost: Cost,
    *,
    steps: tuple[int, int] | None = None,
    factors: np.ndarray | None = None,
) -> tuple[float, float]:
    """The range within [min, max] (widened to 0) whose grid has the lowest ``cost``.

    Candidates shrink the observed range towards zero: both ends by one factor for symmetric schemas
    and one-sided data, each end by its own factor otherwise (coordinate sweeps over ``factors``,
    octaves by default, then local refinement in 1/4, 1/16 and 1/64 octave steps).  Ties keep the
    wider range, so the result is a pure function of the statistics.
    """
    return search_ranges(
        [stats], schema, bitwidth, lambda batch: cost(batch.grids), steps=steps, factors=factors
    )[0]


def search_ranges(
    stats: Sequence[TensorStats],
    schema: QuantizationSchema,
    bitwidth: int,
    cost: BatchCost,
    *,
    steps: tuple[int, int] | None = None,
    factors: np.ndarray | None = None,
) -> list[tuple[float, float]]:
    """:func:`search_range` of many tensors, run in lockstep: each round the schema encodes every
    tensor's candidates in one call and ``cost`` scores them all at once (a :class:`GridBatch`).  Each
    tensor's candidates, and so its result, are exactly those of :func:`search_range`.

    ``cost`` may give ``inf`` to a candidate that certainly costs more than another candidate of the
    same tensor in the batch (a bound rules it out); such a number is used for that round only."""
    coarse = shrink_factors() if factors is None else np.asarray(factors, dtype=np.float64)
    results: list[tuple[float, float] | None] = [trivial_range(s) for s in stats]
    ends = [(min(s.min, 0.0), max(s.max, 0.0)) for s in stats]
    live = {
        i: _search_factors(schema.symmetric or ends[i][0] == 0.0 or ends[i][1] == 0.0, coarse)
        for i, r in enumerate(results)
        if r is None
    }
    asks = {i: next(g) for i, g in live.items()}
    seen: dict[int, dict[tuple[float, float], float]] = {i: {} for i in live}  # sweeps revisit pairs
    while asks:
        order = list(asks)
        pairs = {i: list(zip(asks[i][0].tolist(), asks[i][1].tolist(), strict=True)) for i in order}
        new = {i: list(dict.fromkeys(p for p in pairs[i] if p not in seen[i])) for i in order}
        scored = [i for i in order if new[i]]
        fresh: dict[int, dict[tuple[float, float], float]] = {}
        if scored:
            counts = [len(new[i]) for i in scored]
            fa, fb = np.array([p for i in scored for p in new[i]], dtype=np.float64).reshape(-1, 2).T
            owner = np.repeat(np.arange(len(scored)), counts)
            lo0 = np.array([ends[i][0] for i in scored])[owner]
            hi0 = np.array([ends[i][1] for i in scored])[owner]
            grids = CandidateGrids.from_ranges(schema, bitwidth, lo0 * fa, hi0 * fb, steps=steps)
            starts = np.concatenate(([0], np.cumsum(counts)))
            costs = np.asarray(cost(GridBatch(grids, starts, np.array(scored))), dtype=np.float64).tolist()
            for k, i in enumerate(scored):
                fresh[i] = dict(zip(new[i], costs[starts[k] : starts[k + 1]], strict=True))
                # (inf: not the round's best, maybe not scored in full -- not a number to keep)
                seen[i].update((p, c) for p, c in fresh[i].items() if math.isfinite(c))
        for i in order:
            memo, now = seen[i], fresh.get(i, {})
            try:
                asks[i] = live[i].send(np.array([memo[p] if p in memo else now[p] for p in pairs[i]]))
            except StopIteration as done:
                a, b = done.value
                results[i] = (ends[i][0] * a, ends[i][1] * b)
                del asks[i]
    return [r for r in results if r is not None]  # all are set by now


def minimum_noise_range(
    stats: TensorStats,
    schema: QuantizationSchema,
    bitwidth: int,
    *,
    clip_weight: float = 1.0,
    steps: tuple[int, int] | None = None,
) -> tuple[float, float]:
    """The range whose grid has the least expected squared error, clipping errors x ``clip_weight``."""
    return minimum_noise_ranges([stats], schema, bitwidth, clip_weight=clip_weight, steps=steps)[0]


def minimum_noise_ranges(
    stats: Sequence[TensorStats],
    schema: QuantizationSchema,
    bitwidth: int,
    *,
    clip_weight: float = 1.0,
    steps: tuple[int, int] | None = None,
) -> list[tuple[float, float]]:
    """:func:`minimum_noise_range` of many tensors (the same ranges, searched and scored together)."""
    intervals = [Intervals.of(s) if trivial_range(s) is None else Intervals.of(TensorStats()) for s in stats]
    return search_ranges(
        stats, schema, bitwidth, NoiseOfMany(intervals, clip_weight=clip_weight, best_only=True), steps=steps
    )


class MinimumNoiseMethod(CalibrationMethod):
    """A calibration method choosing the range of least expected squared error, clipping errors counted
    ``clip_weight`` times (sqnr and mse are this with 3 and 1): a subclass sets ``name``,
    ``description`` and ``clip_weight``."""

    clip_weight: float = 1.0

    def choose_ranges(
        self,
        stats: Sequence[TensorStats],
        *,
        bitwidth: int,
        schema: QuantizationSchema,
        options: CalibrationOptions,
    ) -> list[tuple[float, float]]:
        return minimum_noise_ranges(
            stats, schema, bitwidth, clip_weight=self.clip_weight, steps=options.steps
        )
