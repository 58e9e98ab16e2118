"""Streaming, mergeable statistics of a tensor's values.

A :class:`TensorStats` holds a bounded state whatever the number of samples: count, min, max, the
number of non-finite values seen, and a histogram of ``BINS`` bins.  The histogram lies on a canonical
grid -- bin width a power of two, bin edges at integer multiples of the width -- chosen from (min, max)
alone, so a histogram re-binned onto a coarser grid is exact, and merging the statistics of two halves
of a data set gives exactly the statistics of the whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

BINS = 2048
# Bin widths never go below this fraction of the largest magnitude seen, so bin indices fit in int64
# even for a constant tensor.
_MIN_RELATIVE_WIDTH_EXP = -40
_MIN_WIDTH_EXP = -126


def _width_exponent(lo: float, hi: float, bins: int) -> int:
    """Smallest exponent e such that [lo, hi] spans fewer than ``bins`` bins of width 2**e."""
    mag = max(abs(lo), abs(hi))
    e = _MIN_WIDTH_EXP
    if mag > 0:
        e = max(e, math.frexp(mag)[1] + _MIN_RELATIVE_WIDTH_EXP)
    span = hi - lo
    if span > 0:
        e = max(e, math.frexp(span / bins)[1] - 1)
    while math.floor(hi / 2.0**e) - math.floor(lo / 2.0**e) >= bins:
        e += 1
    return e


@dataclass
class TensorStats:
    """Statistics of one tensor (or one channel of it) over every sample observed so far."""

    count: int = 0
    min: float = math.inf
    max: float = -math.inf
    nonfinite: int = 0
    bins: int = BINS  # 0: track count/min/max only (methods that read no histogram)
    width_exp: int = 0  # bin width is 2**width_exp
    first_bin: int = 0  # index of the first bin on the grid: its left edge is first_bin * width
    hist: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def of(cls, values: np.ndarray, bins: int = BINS) -> TensorStats:
        stats = cls(bins=bins)
        stats.observe(values)
        return stats

    @property
    def width(self) -> float:
        return 2.0**self.width_exp

    @property
    def empty(self) -> bool:
        return self.count == 0

    def observe(self, values: np.ndarray) -> None:
        """Add a batch of values (any shape, any float or integer dtype)."""
        x = np.asarray(values)
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        x = x.ravel()
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = np.isfinite(x)
            self.nonfinite += int(x.size - np.count_nonzero(finite))
            x = x[finite]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        if not self.bins:
            self.min, self.max = min(self.min, lo), max(self.max, hi)
            self.count += int(x.size)
            return
        self._regrid(min(self.min, lo), max(self.max, hi))
        # x / width is exact (power-of-two scaling), so bin membership does not depend on batching.
        idx = np.floor(x / self.width).astype(np.int64) - self.first_bin
        self.hist += np.bincount(idx, minlength=self.bins)
        self.count += int(x.size)

    def observe_summary(self, lo: float, hi: float, n: int, sample: np.ndarray | None = None) -> None:
        """Add a batch known by its exact min, max and size, with (optionally) a subsample of its values
        for the histogram.  The histogram then holds the subsample's counts: methods read it as a
        distribution (relative counts), never as the number of values."""
        if n == 0:
            return
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("observe_summary takes finite bounds; use observe() for non-finite data")
        if not self.bins:
            self.min, self.max = min(self.min, lo), max(self.max, hi)
            self.count += n
            return
        self._regrid(min(self.min, lo), max(self.max, hi))
        if sample is not None and sample.size:
            x = sample.ravel()
            idx = np.floor(x / self.width).astype(np.int64) - self.first_bin
            np.clip(idx, 0, self.bins - 1, out=idx)  # a subsample lies within [lo, hi] already
            self.hist += np.bincount(idx, minlength=self.bins)
        self.count += n

    def _regrid(self, lo: float, hi: float) -> None:
        """Move the histogram onto the canonical grid for [lo, hi] (never finer than the current one)."""
        e = _width_exponent(lo, hi, self.bins)
        if self.count:
            e = max(e, self.width_exp)
        first = math.floor(lo / 2.0**e)
        if self.count and e == self.width_exp and first == self.first_bin:
            self.min, self.max = lo, hi
            return
        hist = np.zeros(self.bins, dtype=np.int64)
        if self.count:
            self._add_onto(hist, e, first)
        self.hist, self.width_exp, self.first_bin = hist, e, first
        self.min, self.max = lo, hi

    def _add_onto(self, hist: np.ndarray, e: int, first: int) -> None:
        """Add this histogram's counts to ``hist``, the bins of the grid of width 2**e from bin ``first``
        (no finer than this one's, and covering this one's values): grids align, so each bin lands whole
        in one bin of the coarser grid."""
        if e == self.width_exp:  # the same width: the bins line up, shifted (the usual case)
            d = self.first_bin - first
            hist[d:] += self.hist[: self.bins - d]
            return
        idx = np.nonzero(self.hist)[0]
        np.add.at(hist, ((idx + self.first_bin) >> (e - self.width_exp)) - first, self.hist[idx])

    def merge(self, other: TensorStats) -> TensorStats:
        """Statistics of both data sets together (neither input is changed)."""
        if other.bins != self.bins:
            raise ValueError("cannot merge statistics with different bin counts")
        out = TensorStats(bins=self.bins)
        for part in (self, other):
            out.nonfinite += part.nonfinite
        parts = [p for p in (self, other) if p.count]
        if not parts:
            return out
        if not self.bins:
            out.count = sum(p.count for p in parts)
            out.min, out.max = min(p.min for p in parts), max(p.max for p in parts)
            return out
        lo = min(p.min for p in parts)
        hi = max(p.max for p in parts)
        e = max([_width_exponent(lo, hi, self.bins)] + [p.width_exp for p in parts])
        first = math.floor(lo / 2.0**e)
        hist = np.zeros(self.bins, dtype=np.int64)
        for p in parts:
            p._add_onto(hist, e, first)
        out.count = sum(p.count for p in parts)
        out.min, out.max = lo, hi
        out.width_exp, out.first_bin, out.hist = e, first, hist
        return out

    # ---- reading -------------------------------------------------------------------------------
    @property
    def has_histogram(self) -> bool:
        return self.bins > 0 and self.count > 0

    def edges(self) -> np.ndarray:
        """Bin edges (``bins + 1`` values)."""
        return (self.first_bin + np.arange(self.bins + 1, dtype=np.float64)) * self.width

    def centers(self) -> np.ndarray:
        return (self.first_bin + np.arange(self.bins, dtype=np.float64) + 0.5) * self.width

    def occupied(self) -> tuple[np.ndarray, np.ndarray]:
        """(centers, counts) of the non-empty bins, with the outermost centers clamped to min/max."""
        idx = np.nonzero(self.hist)[0]
        centers = np.clip((self.first_bin + idx + 0.5) * self.width, self.min, self.max)
        return centers, self.hist[idx].astype(np.float64)

    def to_dict(self) -> dict:
        idx = np.nonzero(self.hist)[0] if self.hist.size else np.zeros(0, dtype=np.int64)
        return {
            "count": self.count,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "nonfinite": self.nonfinite,
            "bins": self.bins,
            "width_exp": self.width_exp,
            "first_bin": self.first_bin,
            "hist": {"index": idx.tolist(), "count": self.hist[idx].tolist()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> TensorStats:
        s = cls(bins=d["bins"], count=d["count"], nonfinite=d["nonfinite"])
        if s.count:
            s.min, s.max = float(d["min"]), float(d["max"])
        if s.count and s.bins:
            s.width_exp, s.first_bin = d["width_exp"], d["first_bin"]
            s.hist = np.zeros(s.bins, dtype=np.int64)
            s.hist[np.asarray(d["hist"]["index"], dtype=np.int64)] = d["hist"]["count"]
        return s


_FLOAT32_WHOLE = 2**24  # float32 holds every whole number up to this


def _exact_float(whole: np.ndarray, largest_sum: int) -> np.ndarray:
    """Whole numbers as float32 where it holds them, and every sum up to ``largest_sum``, exactly; else
    as float64."""
    small = largest_sum <= _FLOAT32_WHOLE and (whole.size == 0 or int(np.abs(whole).max()) <= _FLOAT32_WHOLE)
    return whole.astype(np.float32 if small else np.float64)


class StatsGroup:
    """The statistics of many tensors observed together, sample after sample.

    :meth:`observe_summaries` is :meth:`TensorStats.observe_summary` for every tensor at once, with one
    histogram pass for all of them (one call per tensor costs more than the forward pass on small
    models).  The tensors' histograms are rows of one array, so one addition updates them all.
    """

    def __init__(self, stats: Sequence[TensorStats]) -> None:
        self.stats = list(stats)
        bins = {s.bins for s in self.stats}
        if len(bins) > 1:
            raise ValueError("a StatsGroup takes statistics with one bin count")
        self.bins = bins.pop() if bins else 0
        self._lo = np.array([s.min for s in self.stats], dtype=np.float64)
        self._hi = np.array([s.max for s in self.stats], dtype=np.float64)
        self._hist = np.zeros((len(self.stats), self.bins), dtype=np.int64)
        for i in range(len(self.stats)):
            self._bind(i)
        # the per-value arrays of the last subsample layout: (lengths, 2**-width, bin shift)
        self._grids: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._work: tuple[np.ndarray, np.ndarray] | None = None  # scaled values, bin indices

    def _bind(self, i: int) -> None:
        """Make tensor i's histogram a row of the group's array (again, after a re-grid replaced it)."""
        s = self.stats[i]
        if s.hist.size == self.bins and self.bins:
            self._hist[i] = s.hist
            s.hist = self._hist[i]

    def observe_summaries(
        self,
        lo: np.ndarray,
        hi: np.ndarray,
        n: np.ndarray,
        values: np.ndarray | None = None,
        lengths: np.ndarray | None = None,
    ) -> None:
        """Tensor i's exact (finite) bounds ``lo[i]``, ``hi[i]`` and size ``n[i]``; ``values`` holds the
        tensors' subsamples one after another, ``lengths[i]`` of them for tensor i.  The result is
        exactly that of calling ``observe_summary`` on each tensor in turn."""
        # bounds and grids first; only a tensor whose range grew can move to another grid
        grew = np.nonzero((n > 0) & ((lo < self._lo) | (hi > self._hi)))[0]
        for i in grew:
            s = self.stats[i]
            s.observe_summary(float(lo[i]), float(hi[i]), int(n[i]))
            self._lo[i], self._hi[i] = s.min, s.max
            self._bind(i)
        grown = set(grew.tolist())
        for i, (s, k) in enumerate(zip(self.stats, n.tolist(), strict=True)):
            if i not in grown:
                s.count += k
        if values is None or lengths is None or not values.size or not self.bins:
            return
        scale, shift = self._element_grids(lengths, grew)
        # x * 2**-e is exact in float32, so every value falls in the bin observe_summary would put it
        # in; tensor i's bins are numbered from i * bins, for one pass over all tensors.  Adding the bin
        # shift to the floored value is exact too: in float32 only while the shifts and every bin number
        # (below tensors x bins) stay within 2**24, else in float64.  The work arrays are kept from sample
        # to sample: allocating them anew costs as much as the arithmetic; np.add.at counts straight
        # into the histograms, without a bincount's temporary.
        if self._work is None or self._work[0].size != values.size or self._work[0].dtype != shift.dtype:
            self._work = (np.empty(values.size, dtype=shift.dtype), np.empty(values.size, dtype=np.intp))
        scaled, idx = self._work
        np.multiply(values, scale, out=scaled)
        np.floor(scaled, out=scaled)
        np.add(scaled, shift, out=scaled)
        np.copyto(idx, scaled, casting="unsafe")
        # values lie within their tensor's [lo, hi], so no clip; a value outside is a caller's error, which
        # np.add.at would not see below zero (negative indices count from the end)
        if idx.min() < 0:
            raise ValueError("a subsample value lies outside its tensor's observed range")
        try:
            np.add.at(self._hist.reshape(-1), idx, 1)
        except IndexError:
            raise ValueError("a subsample value lies outside its tensor's observed range") from None

    def refresh(self, indices: Iterable[int]) -> None:
        """Take in what tensors ``indices`` observed outside the group (``TensorStats.observe``)."""
        moved = np.fromiter(indices, dtype=np.int64)
        for i in moved:
            self._lo[i], self._hi[i] = self.stats[i].min, self.stats[i].max
            self._bind(i)
        if self._grids is not None:
            self._rewrite(moved)

    def _element_grids(self, lengths: np.ndarray, moved: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per subsample value: its tensor's 2**-width and bin shift.  Kept from sample to sample; only
        the stretches of tensors whose grid ``moved`` are rewritten."""
        if self._grids is None or not np.array_equal(self._grids[0], lengths):
            scale = np.repeat(np.array([2.0**-s.width_exp for s in self.stats], dtype=np.float32), lengths)
            base = np.arange(len(self.stats), dtype=np.int64) * self.bins
            first = np.array([s.first_bin for s in self.stats], dtype=np.int64)
            shift = _exact_float(np.repeat(base - first, lengths), len(self.stats) * self.bins)
            self._grids = (lengths.copy(), scale, shift)
        else:
            self._rewrite(moved)
        return self._grids[1], self._grids[2]

    def _rewrite(self, moved: np.ndarray) -> None:
        assert self._grids is not None
        if not len(moved):  # (most samples, once ranges settle)
            return
        lengths, scale, shift = self._grids
        ends = np.cumsum(lengths)
        for i in moved:
            s = self.stats[i]
            a, b = int(ends[i] - lengths[i]), int(ends[i])
            scale[a:b] = 2.0**-s.width_exp
            if shift.dtype == np.float32 and abs(i * self.bins - s.first_bin) > _FLOAT32_WHOLE:
                shift = shift.astype(np.float64)  # (only float64 holds it exactly; bin numbers were checked)
                self._grids = (lengths, scale, shift)
            shift[a:b] = i * self.bins - s.first_bin
