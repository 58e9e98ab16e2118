"""Building blocks for calibration methods that search for a range (public: third-party methods use them).

A searching method proposes candidate ranges, lets the schema turn every one into the grid it would
really use (:class:`CandidateGrids` -- scale, offset and integer limits, so offset rounding and the
zero-point constraint are part of what is scored), scores all candidates at once against the histogram
(:func:`expected_noise`, :func:`kl_divergence`) and keeps the best (:func:`search_range`).

The histogram model used throughout: the values counted in a bin are spread uniformly over that bin,
with the outermost occupied bins cut to the observed minimum and maximum.  Under this model the
expected squared error of a grid has a closed form, so no sample values are needed and every score is
a function of the (mergeable) statistics alone.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from opendlc.observers import TensorStats
from opendlc.schemas import QuantizationSchema

__all__ = [
    "CandidateGrids",
    "GridBatch",
    "Intervals",
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


# ---- the histogram as intervals ------------------------------------------------------------------
@dataclass(frozen=True)
class Intervals:
    """The occupied bins of a histogram as intervals ``[left, right]`` holding ``count`` values each.

    Intervals are sorted and do not overlap; the outermost ones are cut to the observed min/max, so an
    interval may have zero width (all its values sit on one point).
    """

    left: np.ndarray
    right: np.ndarray
    count: np.ndarray
    # When the intervals are bins of a grid of this width: interval i is bin bin_index[i], i.e. it
    # lies in [bin_index[i] * bin_width, (bin_index[i] + 1) * bin_width).  Lets lookups use arithmetic.
    bin_width: float | None = None
    bin_index: np.ndarray | None = None

    @classmethod
    def of(cls, stats: TensorStats, *, absolute: bool = False) -> Intervals:
        """The occupied bins of ``stats``; with ``absolute``, of the magnitudes |x| instead.

        Folding is exact on the canonical grid: bin edges are integer multiples of the bin width, so
        bin ``k < 0`` of x is bin ``-k-1`` of |x|.
        """
        idx = np.nonzero(stats.hist)[0]
        counts = stats.hist[idx].astype(np.float64)
        k = stats.first_bin + idx
        lo, hi = stats.min, stats.max
        if absolute:
            k = np.where(k < 0, -k - 1, k)
            order = np.argsort(k, kind="stable")
            k, counts = k[order], counts[order]
            first = np.concatenate(([True], k[1:] != k[:-1]))
            counts = np.add.reduceat(counts, np.nonzero(first)[0])
            k = k[first]
            lo, hi = (lo, hi) if lo >= 0 else (-hi, -lo) if hi <= 0 else (0.0, max(-lo, hi))
        edges = k.astype(np.float64) * stats.width
        left = np.clip(edges, lo, hi)
        right = np.clip(edges + stats.width, lo, hi)
        return cls(left, right, counts, stats.width, k.astype(np.int64))

    @property
    def total(self) -> float:
        return float(self.count.sum())

    @property
    def width(self) -> np.ndarray:
        return self.right - self.left

    @cached_property
    def moment_table(self) -> np.ndarray:
        """Lookup rows: left, 1/width, count, and the count/sum/sum of squares of everything before.

        Row 0 is an empty sentinel below all values.  With a bin grid, there is one row per bin from
        the first occupied to the last (empty bins hold nothing) and a sentinel above, so the row of x
        is ``floor(x / bin_width) - first + 1``; otherwise one row per interval, found by bisection.
        """
        left, count, width = self.left, self.count, self.width
        if self.bin_index is not None and self.bin_width is not None and left.size:
            k = self.bin_index - self.bin_index[0]
            dense = int(k[-1]) + 1
            left = (self.bin_index[0] + np.arange(dense, dtype=np.float64)) * self.bin_width
            width = np.full(dense, self.bin_width)
            left[k], width[k] = self.left, self.width
            full = np.zeros(dense)
            full[k] = count
            left = np.concatenate((left, [self.right[-1]]))
            width = np.concatenate((width, [0.0]))
            count = np.concatenate((full, [0.0]))
        n, a, b = count, left, left + width
        moments = (n, n * (a + b) / 2, n * (a * a + a * b + b * b) / 3)
        before = [np.concatenate(([0.0], np.cumsum(m))) for m in moments]
        start = (left[0] - 1.0) if left.size else -1.0
        with np.errstate(divide="ignore"):
            inv_w = 1.0 / width
        rows = [
            np.concatenate(([start], left)),
            np.concatenate(([np.inf], inv_w)),
            np.concatenate(([0.0], count)),
            *(np.concatenate(([0.0], c[:-1])) for c in before),
        ]
        return np.stack(rows)  # (6, rows): one contiguous array per column, for fast np.take

    @cached_property
    def edge_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct edges of the wide intervals, and the density jump at each.

        sum_i density_i * (F(right_i) - F(left_i)) == sum_e jump_e * F(edge_e) for any F: one
        matrix-vector product instead of two gathers.
        """
        wide = self.width > 0
        edges, inverse = np.unique(np.concatenate([self.left[wide], self.right[wide]]), return_inverse=True)
        m = int(np.count_nonzero(wide))
        density = self.count[wide] / self.width[wide]
        jump = np.bincount(inverse[m:], weights=density, minlength=edges.size)
        jump -= np.bincount(inverse[:m], weights=density, minlength=edges.size)
        return edges, jump

    @cached_property
    def edge_moments(self) -> list[np.ndarray]:
        """Prefix sums of jump * edge^k, k = 0..3 (each ``E + 1`` long)."""
        edges, jump = self.edge_weights
        return [np.concatenate(([0.0], np.cumsum(jump * edges**k))) for k in range(4)]


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


# ---- expected squared error ----------------------------------------------------------------------
def expected_noise(
    hist: TensorStats | Intervals,
    grids: CandidateGrids,
    *,
    clip_weight: float = 1.0,
    method: str = "auto",
) -> np.ndarray:
    """Expected sum of squared quantize-dequantize errors of every candidate grid (shape ``(C,)``).

    Errors of values outside the grid (clipping) are multiplied by ``clip_weight``; with 1 this is the
    plain squared error.  Divide by the value count for the mean.  Two exact evaluations of the same
    model are available: ``"cells"`` (cost ~ candidates x grid points, from prefix sums of the bin
    moments) and ``"edges"`` (cost ~ candidates x bin edges, from a closed-form integral of the
    squared rounding error); ``"auto"`` takes the cheaper.
    """
    iv = hist if isinstance(hist, Intervals) else Intervals.of(hist)
    if len(grids) == 0:
        return np.zeros(0)
    if iv.count.size == 0:
        return np.zeros(len(grids))
    levels = int(grids.last[0] - grids.first[0]) + 1
    uniform_levels = bool(np.all(grids.last - grids.first == levels - 1))
    if method == "auto":
        # both are exact; cells win when the grid has few points compared with the histogram's edges
        method = "cells" if uniform_levels and 4 * (levels + 1) <= iv.count.size else "edges"
    if method == "cells":
        if not uniform_levels:
            raise ValueError("the 'cells' evaluation needs the same number of levels in every grid")
        return _noise_by_cells(iv, grids, clip_weight, levels)
    if method == "edges":
        return _noise_by_edges(iv, grids, clip_weight)
    raise ValueError(f"unknown evaluation method {method!r}")


def _noise_by_cells(iv: Intervals, g: CandidateGrids, clip_weight: float, levels: int) -> np.ndarray:
    # Each value goes to one grid point: below first*scale (clipped) and up to the first rounding
    # boundary -> first point; between boundaries -> the nearest point; beyond -> last point.  For every
    # interval of the real line with one target g, sum n*(x-g)^2 = S2 - 2 g S1 + g^2 S0 from prefix sums.
    scale = g.scale[:, None]
    k = np.arange(levels + 1, dtype=np.float64)[None, :]
    pos = g.first[:, None] + k - 0.5  # rounding boundaries ...
    pos[:, 0] = g.first  # ... between the clip points
    pos[:, -1] = g.last
    s0, s1, s2 = _prefix_moments(iv, pos * scale)
    total0, total1, total2 = _prefix_moments(iv, np.array([[np.inf]]))
    zero = np.zeros((len(g), 1))
    d0 = np.diff(np.concatenate([zero, s0, total0 + zero], axis=1), axis=1)
    d1 = np.diff(np.concatenate([zero, s1, total1 + zero], axis=1), axis=1)
    d2 = np.diff(np.concatenate([zero, s2, total2 + zero], axis=1), axis=1)
    target = np.concatenate([g.first[:, None], g.first[:, None] + k[:, :-1], g.last[:, None]], axis=1)
    target = target * scale
    err = np.maximum(d2 - 2.0 * target * d1 + target * target * d0, 0.0)
    err[:, 0] *= clip_weight
    err[:, -1] *= clip_weight
    return err.sum(axis=1)


def _prefix_moments(iv: Intervals, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, sum and sum of squares of the values below ``x`` (any shape)."""
    table = iv.moment_table
    if iv.bin_index is not None and iv.bin_width is not None and iv.left.size:
        j = np.floor(x * (1.0 / iv.bin_width)) - (iv.bin_index[0] - 1)  # bin widths are powers of 2
        j = np.clip(np.nan_to_num(j), 0, table.shape[1] - 1).astype(np.intp)
    else:
        j = np.maximum(np.searchsorted(table[0], x, side="left") - 1, 0)  # last row starting below x
    return _moments_at(table, j, x)


def _moments_at(table: np.ndarray, j: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_prefix_moments` given the moment-table row ``j`` of each ``x``."""
    a, inv_w, n, before0, before1, before2 = (np.take(column, j) for column in table)
    with np.errstate(invalid="ignore"):  # 0 * inf where x sits on a point mass: not below x
        part = n * np.where(x > a, np.minimum((x - a) * inv_w, 1.0), 0.0)
    xe = a + part / np.where(n > 0, n, 1.0) / inv_w  # where the counted part ends
    m0 = before0 + part
    m1 = before1 + part * (a + xe) * 0.5
    m2 = before2 + part * (a * a + a * xe + xe * xe) * (1.0 / 3.0)
    return m0, m1, m2


# Bins at least this many steps wide: their squared rounding error is taken as scale^2/12 per value,
# dropping the periodic sub-bin term (at most 0.38 * step / width of a bin's rounding noise, and it
# cancels between neighbouring bins: measured below 0.1% of the total on smooth and spiky histograms).
WIDE_BIN_STEPS = 32.0


def _noise_by_edges(iv: Intervals, g: CandidateGrids, clip_weight: float) -> np.ndarray:
    # In grid units t = x/scale, H(t) is the integral of the (weighted) squared error from `first` to t;
    # a bin holding n values uniformly on [a, b] contributes n * scale^2 * (H(b) - H(a)) / (b - a),
    # i.e. scale^3 * sum over edges of density jump * H.  H is a polynomial outside the grid and a line
    # plus a periodic term inside it: the polynomial parts come from prefix sums of the jumps' moments.
    out = np.zeros(len(g))
    edges, jump = iv.edge_weights
    if edges.size:
        cum = iv.edge_moments
        lo, hi = g.first * g.scale, g.last * g.scale
        i_lo = np.searchsorted(edges, lo, side="left")  # edges below the grid: [0, i_lo)
        i_hi = np.searchsorted(edges, hi, side="right")  # edges above it: [i_hi, E)
        below = [c[i_lo] for c in cum]
        inside = [c[i_hi] - c[i_lo] for c in cum]
        above = [c[-1] - c[i_hi] for c in cum]
        # sum jump * (lo - e)^3 below, sum jump * (e - hi)^3 above
        cube_below = lo**3 * below[0] - 3 * lo**2 * below[1] + 3 * lo * below[2] - below[3]
        cube_above = above[3] - 3 * hi * above[2] + 3 * hi**2 * above[1] - hi**3 * above[0]
        line = (inside[1] - lo * inside[0]) + (hi - lo) * above[0]
        out += g.scale**2 / 12.0 * line + clip_weight / 3.0 * (cube_above - cube_below)
        fine = iv.width.max() < WIDE_BIN_STEPS * g.scale
        if fine.any():
            scale = g.scale[fine, None]
            tc = np.clip(edges[None, :] / scale, g.first[fine, None], g.last[fine, None])
            u = tc - np.rint(tc)
            out[fine] += g.scale[fine] ** 3 * ((u * (u * u * (1.0 / 3.0) - 1.0 / 12.0)) @ jump)
    point = iv.width <= 0
    if point.any():  # point masses: their own error, no spreading
        scale = g.scale[:, None]
        lo, hi = g.first[:, None], g.last[:, None]
        tp = iv.left[point][None, :] / scale
        q = np.clip(np.rint(tp), lo, hi)
        e2 = (tp - q) ** 2 * np.where((tp < lo) | (tp > hi), clip_weight, 1.0)
        out += g.scale**2 * (e2 @ iv.count[point])
    return np.maximum(out, 0.0)


# ---- many tensors at once -------------------------------------------------------------------------
# The batched evaluations below give every candidate exactly the number the per-tensor functions give:
# element-wise steps are the same operations on the same operands (IEEE arithmetic does not care which
# array an element sits in), and every reduction (row sums, each tensor's matrix-vector products) runs
# on the same rows in the same order as it does per tensor.


class _Packed:
    """Per-tensor 1-D arrays (one or more fields of equal length per tensor) laid end to end, so that
    one gather serves many tensors.  A tensor is packed on first use."""

    def __init__(self, fields: Callable[[int], Sequence[np.ndarray]]) -> None:
        self._fields = fields
        self._offset: dict[int, int] = {}
        self._size: dict[int, int] = {}
        self._parts: list[Sequence[np.ndarray]] = []
        self.flat: list[np.ndarray] = []

    def locate(self, tensors: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Offsets and sizes of ``tensors`` in :attr:`flat`."""
        missing = [t for t in dict.fromkeys(tensors) if t not in self._offset]
        if missing:
            end = sum(self._size.values())
            for t in missing:
                part = self._fields(t)
                self._offset[t], self._size[t] = end, int(part[0].size)
                end += int(part[0].size)
                self._parts.append(part)
            self.flat = [np.concatenate(f) for f in zip(*self._parts, strict=True)]
        return (
            np.array([self._offset[t] for t in tensors], dtype=np.intp),
            np.array([self._size[t] for t in tensors], dtype=np.intp),
        )


def _expand(sizes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row r stands for elements ``offsets[r] : offsets[r] + sizes[r]`` of a packed array: the row of
    each element (row-major), its index in the packed array, and where each row starts."""
    starts = np.concatenate(([0], np.cumsum(sizes)))
    row = np.repeat(np.arange(sizes.size), sizes)
    return row, offsets[row] + (np.arange(starts[-1]) - starts[:-1][row]), starts


def _runs(owner: np.ndarray) -> list[tuple[int, int]]:
    """The (start, stop) of each run of equal values in ``owner``."""
    cuts = np.flatnonzero(owner[1:] != owner[:-1]) + 1
    bounds = [0, *cuts.tolist(), owner.size]
    return list(itertools.pairwise(bounds))


CELL_CHUNK = 8192  # grid cells evaluated at once by NoiseOfMany (rows x levels)


class NoiseOfMany:
    """:func:`expected_noise` of many tensors' candidates at once (a :data:`BatchCost` for
    :func:`search_ranges`): ``intervals[i]`` is the histogram of the ``i``-th searched tensor.  Gives
    each candidate exactly the number :func:`expected_noise` (``method="auto"``) gives it."""

    def __init__(self, intervals: Sequence[Intervals], *, clip_weight: float = 1.0) -> None:
        self.intervals = intervals
        self.clip_weight = clip_weight
        self._cells = _Packed(lambda t: list(self.intervals[t].moment_table))
        self._cell_totals: dict[int, tuple[np.ndarray, ...]] = {}
        self._cum = _Packed(lambda t: self.intervals[t].edge_moments)
        self._edges = _Packed(lambda t: [self.intervals[t].edge_weights[0]])
        self._points = _Packed(lambda t: self._point_masses(t))
        self._scratch = np.empty(0)

    def _point_masses(self, t: int) -> list[np.ndarray]:
        iv = self.intervals[t]
        point = iv.width <= 0
        return [iv.left[point], iv.count[point]]

    def __call__(self, batch: GridBatch) -> np.ndarray:
        g, starts = batch.grids, batch.starts
        out = np.zeros(len(g))
        if len(g) == 0:
            return out
        span = g.last - g.first
        first_span = span[starts[:-1]]
        uniform = (np.minimum.reduceat(span, starts[:-1]) == first_span) & (
            np.maximum.reduceat(span, starts[:-1]) == first_span
        )
        cells: dict[int, list[int]] = {}
        edges: list[int] = []
        for k, t in enumerate(batch.tensors.tolist()):
            iv = self.intervals[t]
            if iv.count.size == 0:
                continue  # no values: no noise
            levels = int(first_span[k]) + 1
            if uniform[k] and 4 * (levels + 1) <= iv.count.size:
                if iv.bin_index is None or iv.bin_width is None:  # no arithmetic lookup: per tensor
                    s, e = int(starts[k]), int(starts[k + 1])
                    out[s:e] = expected_noise(iv, batch.rows(k), clip_weight=self.clip_weight)
                else:
                    cells.setdefault(levels, []).append(k)
            else:
                edges.append(k)
        for levels, ks in cells.items():
            rows, owner = self._rows(batch, ks)
            tensors = [int(batch.tensors[k]) for k in ks]
            # in chunks of rows: (rows x levels) temporaries that stay in cache are faster than big ones
            chunk = max(1, CELL_CHUNK // (levels + 1))
            for c in range(0, rows.size, chunk):
                part = rows[c : c + chunk]
                out[part] = self._by_cells(g, part, owner[c : c + chunk], tensors, levels)
        if edges:
            rows, owner = self._rows(batch, edges)
            out[rows] = self._by_edges(g, rows, owner, [int(batch.tensors[k]) for k in edges])
        return out

    @staticmethod
    def _rows(batch: GridBatch, ks: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The candidate rows of the batch's tensors ``ks`` and, for each, its position in ``ks``."""
        pos = np.asarray(ks, dtype=np.intp)
        sizes = batch.starts[pos + 1] - batch.starts[pos]
        owner, rows, _ = _expand(sizes, batch.starts[pos].astype(np.intp))
        return rows, owner

    def _by_cells(
        self, g: CandidateGrids, rows: np.ndarray, owner: np.ndarray, tensors: list[int], levels: int
    ) -> np.ndarray:
        # _noise_by_cells and _prefix_moments, row by row
        offset, size = self._cells.locate(tensors)
        table = self._cells.flat
        for t in tensors:
            if t not in self._cell_totals:
                self._cell_totals[t] = _prefix_moments(self.intervals[t], np.array([[np.inf]]))
        inv_width = np.array([1.0 / self.intervals[t].bin_width for t in tensors])[owner, None]
        below = np.array([self.intervals[t].bin_index[0] - 1 for t in tensors], dtype=np.float64)[owner, None]
        totals = [np.array([self._cell_totals[t][m][0, 0] for t in tensors])[owner, None] for m in range(3)]
        first, last = g.first[rows], g.last[rows]
        scale = g.scale[rows, None]
        k = np.arange(levels + 1, dtype=np.float64)[None, :]
        pos = first[:, None] + k - 0.5
        pos[:, 0] = first
        pos[:, -1] = last
        x = pos * scale
        j = np.floor(x * inv_width) - below
        j = np.clip(np.nan_to_num(j), 0, (size - 1)[owner, None]).astype(np.intp) + offset[owner, None]
        s0, s1, s2 = _moments_at(table, j, x)
        zero = np.zeros((rows.size, 1))
        d0 = np.diff(np.concatenate([zero, s0, totals[0] + zero], axis=1), axis=1)
        d1 = np.diff(np.concatenate([zero, s1, totals[1] + zero], axis=1), axis=1)
        d2 = np.diff(np.concatenate([zero, s2, totals[2] + zero], axis=1), axis=1)
        target = np.concatenate([first[:, None], first[:, None] + k[:, :-1], last[:, None]], axis=1)
        target = target * scale
        err = np.maximum(d2 - 2.0 * target * d1 + target * target * d0, 0.0)
        err[:, 0] *= self.clip_weight
        err[:, -1] *= self.clip_weight
        return err.sum(axis=1)

    def _by_edges(
        self, g: CandidateGrids, rows: np.ndarray, owner: np.ndarray, tensors: list[int]
    ) -> np.ndarray:
        # _noise_by_edges, row by row
        ivs = [self.intervals[t] for t in tensors]
        scale, first, last = g.scale[rows], g.first[rows], g.last[rows]
        out = np.zeros(rows.size)
        lo, hi = first * scale, last * scale
        _, n_edges = self._edges.locate(tensors)
        cum_offset, _ = self._cum.locate(tensors)
        i_lo = np.zeros(rows.size, dtype=np.intp)
        i_hi = np.zeros(rows.size, dtype=np.intp)
        runs = _runs(owner)
        for m, (s, e) in enumerate(runs):
            if n_edges[m]:
                edges = ivs[m].edge_weights[0]
                i_lo[s:e] = np.searchsorted(edges, lo[s:e], side="left")
                i_hi[s:e] = np.searchsorted(edges, hi[s:e], side="right")
        has_edges = (n_edges > 0)[owner]
        base = cum_offset[owner]
        at_lo, at_hi, at_end = base + i_lo, base + i_hi, base + n_edges[owner]
        cum = self._cum.flat
        below = [c[at_lo] for c in cum]
        inside = [c[at_hi] - c[at_lo] for c in cum]
        above = [c[at_end] - c[at_hi] for c in cum]
        cube_below = lo**3 * below[0] - 3 * lo**2 * below[1] + 3 * lo * below[2] - below[3]
        cube_above = above[3] - 3 * hi * above[2] + 3 * hi**2 * above[1] - hi**3 * above[0]
        line = (inside[1] - lo * inside[0]) + (hi - lo) * above[0]
        smooth = scale**2 / 12.0 * line + self.clip_weight / 3.0 * (cube_above - cube_below)
        out += np.where(has_edges, smooth, 0.0)
        widest = np.array([iv.width.max() for iv in ivs])
        fine = np.flatnonzero(has_edges & (widest[owner] < WIDE_BIN_STEPS * scale))
        if fine.size:
            # Per tensor: the periodic term is a (candidates x edges) product, as in _noise_by_edges.
            periodic = np.empty(fine.size)
            fine_owner = owner[fine]
            for s, e in _runs(fine_owner):
                edges, jump = ivs[int(fine_owner[s])].edge_weights
                r = fine[s:e]
                # The same operations as there, in place in two reused buffers: these arrays are the
                # bulk of the work, and fresh temporaries of this size cost more than the arithmetic.
                tc, u = self._buffers(r.size, edges.size)
                np.divide(edges[None, :], scale[r, None], out=tc)
                np.clip(tc, first[r, None], last[r, None], out=tc)
                np.rint(tc, out=u)
                np.subtract(tc, u, out=u)  # u = tc - rint(tc)
                np.multiply(u, u, out=tc)
                tc *= 1.0 / 3.0
                tc -= 1.0 / 12.0
                tc *= u  # u * (u * u / 3 - 1 / 12)
                periodic[s:e] = tc @ jump
            out[fine] += scale[fine] ** 3 * periodic
        point_offset, n_points = self._points.locate(tensors)
        pointed = np.flatnonzero((n_points > 0)[owner])
        if pointed.size:  # point masses: their own error, no spreading
            element_row, element, row_start = _expand(n_points[owner[pointed]], point_offset[owner[pointed]])
            r = pointed[element_row]
            lo_k, hi_k = first[r], last[r]
            tp = self._points.flat[0][element] / scale[r]
            q = np.clip(np.rint(tp), lo_k, hi_k)
            e2 = (tp - q) ** 2 * np.where((tp < lo_k) | (tp > hi_k), self.clip_weight, 1.0)
            counts = [
                iv.count[iv.width <= 0] if n else np.zeros(0) for iv, n in zip(ivs, n_points, strict=True)
            ]
            out[pointed] += scale[pointed] ** 2 * self._per_tensor_dot(e2, row_start, owner[pointed], counts)
        return np.maximum(out, 0.0)

    def _buffers(self, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        """Two scratch (rows, cols) arrays, reused from call to call."""
        n = rows * cols
        if self._scratch.size < 2 * n:
            self._scratch = np.empty(2 * n)
        return self._scratch[:n].reshape(rows, cols), self._scratch[n : 2 * n].reshape(rows, cols)

    @staticmethod
    def _per_tensor_dot(
        flat: np.ndarray, row_start: np.ndarray, owner: np.ndarray, vectors: list[np.ndarray]
    ) -> np.ndarray:
        """Each row of ``flat`` (rows laid end to end) dotted with its tensor's vector: one
        matrix-vector product per tensor, on the same matrix as the per-tensor evaluation."""
        out = np.empty(owner.size)
        for s, e in _runs(owner):
            v = vectors[int(owner[s])]
            out[s:e] = flat[row_start[s] : row_start[e]].reshape(e - s, v.size) @ v
        return out


# ---- KL divergence (TensorRT-style) ---------------------------------------------------------------
def kl_divergence(stats: TensorStats, grids: CandidateGrids) -> np.ndarray:
    """KL(P || Q) of every candidate grid, TensorRT style, on the histogram's own bins (shape ``(C,)``).

    As in TensorRT's (and MXNet's) entropy calibration: P is the histogram restricted to the bins whose
    centres the grid covers, with the values beyond folded into its first and last bin; Q gives every
    grid cell the mass the *unfolded* restricted histogram has there, spread evenly over the cell's
    bins that are non-empty in P, so clipped values cost divergence.  A cell whose P-mass is only folded
    values gets a floor of ``1e-4`` count per bin (TensorRT smooths such zeros likewise).  A grid whose
    step is narrower than a bin cannot be judged at this resolution (every bin would be a cell of its
    own), so it scores ``inf``.
    """
    out = np.full(len(grids), np.inf)
    n = stats.hist.astype(np.float64)
    nbins = n.size
    zero_bin = -stats.first_bin  # the bin [0, width): exact zeros (ReLU, padding) land there
    if 0 <= zero_bin < nbins:
        # Zero is a point of every grid, so exact zeros lose nothing; but spread evenly over their cell
        # (as Q is) a zero spike would dominate the divergence.  Like ncnn's calibrator, leave it out.
        n[zero_bin] = 0.0
    if not n.any():
        return out
    if stats.empty or nbins < 2 or len(grids) == 0:
        return out
    w = stats.width
    ok = grids.scale >= w
    levels = grids.last - grids.first + 1
    if not ok.any() or not np.all(levels == levels[0]) or levels[0] - 1 > nbins:
        # (more levels than bins: no grid with a step of a bin or more lies within the histogram)
        return out
    pick = np.nonzero(ok)[0]
    scale, first, last = grids.scale[pick, None], grids.first[pick, None], grids.last[pick, None]
    cum_n = np.concatenate(([0.0], np.cumsum(n)))
    cum_nz = np.concatenate(([0.0], np.cumsum(n > 0)))
    cum_nlogn = np.concatenate(([0.0], np.cumsum(_xlogx(n))))
    total = cum_n[-1]

    def bins_below(v: np.ndarray) -> np.ndarray:  # number of bins whose centre is < v
        return np.clip(np.ceil(v / w - stats.first_bin - 0.5), 0, nbins).astype(np.int64)

    a = np.minimum(bins_below((first - 0.5) * scale), nbins - 1)  # first covered bin
    b = np.clip(bins_below((last + 0.5) * scale) - 1, 0, nbins - 1)  # last covered bin
    k = np.arange(1, int(levels[0]), dtype=np.float64)[None, :]
    inner = bins_below((first + k - 0.5) * scale)  # bin boundaries between cells
    bounds = np.concatenate([np.zeros_like(a), inner, np.full_like(a, nbins)], axis=1)
    pa = cum_n[a + 1]  # P's first bin: its own values and everything below
    pb = total - cum_n[b]  # P's last bin: its own values and everything above
    mid = np.clip(bounds, a + 1, b)

    def p_prefix(cum: np.ndarray, first_bin: np.ndarray, last_bin: np.ndarray) -> np.ndarray:
        return (bounds > a) * first_bin + (cum[mid] - cum[a + 1]) + (bounds > b) * last_bin

    p_mass = np.diff(p_prefix(cum_n, pa, pb), axis=1)
    nonempty = np.diff(p_prefix(cum_nz, (pa > 0) * 1.0, (pb > 0) * 1.0), axis=1)
    inside = np.clip(bounds, a, b + 1)
    q_mass = np.diff(cum_n[inside], axis=1)  # the cells' mass without the folded values
    q_mass = np.maximum(q_mass, 1e-4 * nonempty)
    has = p_mass > 0
    log_q = np.log(np.where(has, q_mass, 1.0) / np.where(has, nonempty, 1.0))
    p_log_p = _xlogx(pa) + (cum_nlogn[b] - cum_nlogn[a + 1]) + _xlogx(pb)
    covered = (cum_n[b + 1] - cum_n[a])[:, 0]
    with np.errstate(divide="ignore"):
        kl = (p_log_p[:, 0] - np.sum(np.where(has, p_mass * log_q, 0.0), axis=1)) / total
        kl += np.log(covered) - np.log(total)
    valid = (a[:, 0] < b[:, 0]) & (covered > 0)
    out[pick] = np.where(valid, np.maximum(kl, 0.0), np.inf)
    return out


def _xlogx(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)


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
    tensor's candidates, and so its result, are exactly those of :func:`search_range`."""
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
                seen[i].update(zip(new[i], costs[starts[k] : starts[k + 1]], strict=True))
        for i in order:
            memo = seen[i]
            try:
                asks[i] = live[i].send(np.array([memo[p] for p in pairs[i]]))
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
    intervals = Intervals.of(stats)
    return search_range(
        stats,
        schema,
        bitwidth,
        lambda grids: expected_noise(intervals, grids, clip_weight=clip_weight),
        steps=steps,
    )


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
        stats, schema, bitwidth, NoiseOfMany(intervals, clip_weight=clip_weight), steps=steps
    )
