"""Expected squared quantization error of candidate grids, from a tensor's histogram alone.

The histogram model: the values counted in a bin are spread uniformly over that bin, with the outermost
occupied bins cut to the observed minimum and maximum.  Under this model the expected squared error of
a grid has a closed form, so no sample values are needed and every score is a function of the
(mergeable) statistics.  One implementation serves one tensor (:func:`expected_noise`) and many at once
(:class:`NoiseOfMany`, which a lockstep search uses); both are public, re-exported by
``opendlc.calibration_search``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from opendlc.observers import TensorStats

if TYPE_CHECKING:  # (calibration_search imports this module; only the attributes are used here)
    from opendlc.calibration_search import CandidateGrids, GridBatch

__all__ = ["Intervals", "NoiseOfMany", "WIDE_BIN_STEPS", "expected_noise"]


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

    @cached_property
    def width(self) -> np.ndarray:
        return self.right - self.left

    @cached_property
    def widest(self) -> float:
        return float(self.width.max()) if self.width.size else 0.0

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


# ---- expected squared error ----------------------------------------------------------------------
# Bins at least this many steps wide: their squared rounding error is taken as scale^2/12 per value,
# dropping the periodic sub-bin term (at most 0.38 * step / width of a bin's rounding noise, and it
# cancels between neighbouring bins: measured below 0.1% of the total on smooth and spiky histograms).
WIDE_BIN_STEPS = 32.0

_METHODS = ("auto", "cells", "edges")


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
    if method not in _METHODS:
        raise ValueError(f"unknown evaluation method {method!r}")
    iv = hist if isinstance(hist, Intervals) else Intervals.of(hist)
    one = NoiseOfMany([iv], clip_weight=clip_weight)
    return one.evaluate(grids, np.array([0, len(grids)]), np.array([0]), method=method)


# ---- many tensors at once -------------------------------------------------------------------------
# Candidates of many tensors are evaluated together: element-wise steps run on all their rows at once,
# while every reduction (a row sum, a matrix-vector product with a tensor's vector) runs per row or
# per tensor.  So a candidate's number does not depend on what else is in the batch: one tensor alone
# (expected_noise) gets exactly what it gets in any batch.


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


def _moments_at(
    table: Sequence[np.ndarray], j: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, sum and sum of squares of the values below ``x``, given the moment-table row ``j``
    (see :attr:`Intervals.moment_table`) holding each ``x``."""
    a, inv_w, n, before0, before1, before2 = (np.take(column, j) for column in table)
    with np.errstate(invalid="ignore"):  # 0 * inf where x sits on a point mass: not below x
        part = n * np.where(x > a, np.minimum((x - a) * inv_w, 1.0), 0.0)
    xe = a + part / np.where(n > 0, n, 1.0) / inv_w  # where the counted part ends
    m0 = before0 + part
    m1 = before1 + part * (a + xe) * 0.5
    m2 = before2 + part * (a * a + a * xe + xe * xe) * (1.0 / 3.0)
    return m0, m1, m2


CELL_CHUNK = 8192  # grid cells evaluated at once by NoiseOfMany (rows x levels)


# |u * (u^2 / 3 - 1 / 12)| for |u| <= 1/2 peaks at u = 1 / sqrt(12): the periodic term's bound per unit jump.
_PERIODIC_MAX = 1.0 / (36.0 * np.sqrt(3.0))
# Pruning compares bounds with this relative slack, far above the rounding of the sums it compares.
_PRUNE_SLACK = 1e-6


def _abs_prefix(iv: Intervals) -> np.ndarray:
    return np.concatenate(([0.0], np.cumsum(np.abs(iv.edge_weights[1]))))


class NoiseOfMany:
    """:func:`expected_noise` of many tensors' candidates at once (a ``BatchCost`` for
    :func:`~opendlc.calibration_search.search_ranges`): ``intervals[i]`` is the histogram of the
    ``i``-th searched tensor.  Each candidate gets exactly the number :func:`expected_noise` gives it.

    With ``best_only`` (for searches, which keep only each tensor's cheapest candidate), a candidate that
    provably costs more than another candidate of its tensor in the same batch gets ``inf`` instead:
    the sub-bin (periodic) term, the bulk of the work, is bounded from the edges inside the grid, and
    only candidates whose bounds leave them a chance are scored in full.  The ones scored are exactly
    those numbers, so the cheapest candidate of each tensor is unchanged."""

    def __init__(
        self, intervals: Sequence[Intervals], *, clip_weight: float = 1.0, best_only: bool = False
    ) -> None:
        self.intervals = intervals
        self.clip_weight = clip_weight
        self.best_only = best_only
        self._cells = _Packed(lambda t: list(self.intervals[t].moment_table))
        self._cell_totals: dict[int, tuple[float, float, float]] = {}
        # the edges' moment prefix sums, and (last) the prefix sums of |jump|, which bound the periodic term
        self._cum = _Packed(lambda t: [*self.intervals[t].edge_moments, _abs_prefix(self.intervals[t])])
        self._edges = _Packed(lambda t: [self.intervals[t].edge_weights[0]])
        self._points = _Packed(lambda t: self._point_masses(t))
        self._scratch = np.empty(0)

    def _point_masses(self, t: int) -> list[np.ndarray]:
        iv = self.intervals[t]
        point = iv.width <= 0
        return [iv.left[point], iv.count[point]]

    def __call__(self, batch: GridBatch) -> np.ndarray:
        return self.evaluate(batch.grids, batch.starts, batch.tensors)

    def evaluate(
        self,
        grids: CandidateGrids,
        starts: np.ndarray,
        tensors: np.ndarray,
        *,
        method: str = "auto",
    ) -> np.ndarray:
        """The noise of each row of ``grids``: rows ``starts[i]:starts[i + 1]`` are candidates of
        tensor ``tensors[i]``.  ``method`` as in :func:`expected_noise`; with ``best_only`` (see the
        class), a candidate ruled out gets ``inf``."""
        g = grids
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
        for k, t in enumerate(np.asarray(tensors).tolist()):
            iv = self.intervals[t]
            if iv.count.size == 0:
                continue  # no values: no noise
            levels = int(first_span[k]) + 1
            chosen = method
            if method == "auto":
                # the same model (edges drop only the sub-bin term of bins >= WIDE_BIN_STEPS steps wide);
                # cells cost less only when the grid has far fewer points than the histogram has
                # intervals (measured on PP-OCR: with 2048 bins, 8-bit grids go faster by edges)
                chosen = "cells" if uniform[k] and 16 * (levels + 1) <= iv.count.size else "edges"
            if chosen == "cells":
                if not uniform[k]:
                    raise ValueError("the 'cells' evaluation needs the same number of levels in every grid")
                cells.setdefault(levels, []).append(k)
            elif chosen == "edges":
                edges.append(k)
            else:
                raise ValueError(f"unknown evaluation method {method!r}")
        for levels, ks in cells.items():
            rows, owner = self._rows(starts, ks)
            members = [int(tensors[k]) for k in ks]
            # in chunks of rows: (rows x levels) temporaries that stay in cache are faster than big ones
            chunk = max(1, CELL_CHUNK // (levels + 1))
            for c in range(0, rows.size, chunk):
                part = rows[c : c + chunk]
                out[part] = self._by_cells(g, part, owner[c : c + chunk], members, levels)
        if edges:
            rows, owner = self._rows(starts, edges)
            out[rows] = self._by_edges(g, rows, owner, [int(tensors[k]) for k in edges])
        return out

    @staticmethod
    def _rows(starts: np.ndarray, ks: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The candidate rows of the batch's tensors ``ks`` and, for each, its position in ``ks``."""
        pos = np.asarray(ks, dtype=np.intp)
        sizes = starts[pos + 1] - starts[pos]
        owner, rows, _ = _expand(sizes, starts[pos].astype(np.intp))
        return rows, owner

    def _table_rows(self, tensors: list[int], owner: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The row of the packed moment tables holding each ``x`` (row r of ``x`` belongs to tensor
        ``tensors[owner[r]]``): arithmetic on a bin grid, bisection for intervals off any grid."""
        offset, size = self._cells.locate(tensors)
        ivs = [self.intervals[t] for t in tensors]
        on_grid = [iv.bin_index is not None and iv.bin_width is not None for iv in ivs]
        inv_width = np.array([1.0 / iv.bin_width if ok else 0.0 for iv, ok in zip(ivs, on_grid, strict=True)])
        below = np.array([iv.bin_index[0] - 1 if ok else 0 for iv, ok in zip(ivs, on_grid, strict=True)])
        with np.errstate(invalid="ignore"):  # inf * 0 off the grid: replaced below
            j = np.floor(x * inv_width[owner, None]) - below.astype(np.float64)[owner, None]
        j = np.clip(np.nan_to_num(j), 0, (size - 1)[owner, None]).astype(np.intp)
        if not all(on_grid):
            starts = self._cells.flat[0]
            for s, e in _runs(owner):
                m = int(owner[s])
                if not on_grid[m]:
                    row_start = starts[offset[m] : offset[m] + size[m]]
                    j[s:e] = np.maximum(np.searchsorted(row_start, x[s:e], side="left") - 1, 0)
        return j + offset[owner, None]

    def _totals(self, tensors: list[int]) -> list[np.ndarray]:
        """Count, sum and sum of squares of all values of each tensor."""
        missing = [t for t in dict.fromkeys(tensors) if t not in self._cell_totals]
        if missing:
            x = np.full((len(missing), 1), np.inf)
            owner = np.arange(len(missing))
            j = self._table_rows(missing, owner, x)  # (packs the tables first)
            moments = _moments_at(self._cells.flat, j, x)
            for i, t in enumerate(missing):
                self._cell_totals[t] = (moments[0][i, 0], moments[1][i, 0], moments[2][i, 0])
        return [np.array([self._cell_totals[t][m] for t in tensors]) for m in range(3)]

    def _by_cells(
        self, g: CandidateGrids, rows: np.ndarray, owner: np.ndarray, tensors: list[int], levels: int
    ) -> np.ndarray:
        # Each value goes to one grid point: below first*scale (clipped) and up to the first rounding
        # boundary -> first point; between boundaries -> the nearest point; beyond -> last point.  For
        # every interval of the real line with one target g, sum n*(x-g)^2 = S2 - 2 g S1 + g^2 S0 from
        # prefix sums.
        totals = [m[owner, None] for m in self._totals(tensors)]
        first, last = g.first[rows], g.last[rows]
        scale = g.scale[rows, None]
        k = np.arange(levels + 1, dtype=np.float64)[None, :]
        pos = first[:, None] + k - 0.5  # rounding boundaries ...
        pos[:, 0] = first  # ... between the clip points
        pos[:, -1] = last
        x = pos * scale
        j = self._table_rows(tensors, owner, x)
        s0, s1, s2 = _moments_at(self._cells.flat, j, x)
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
        self,
        g: CandidateGrids,
        rows: np.ndarray,
        owner: np.ndarray,
        tensors: list[int],
    ) -> np.ndarray:
        # In grid units t = x/scale, H(t) is the integral of the (weighted) squared error from `first`
        # to t; a bin holding n values uniformly on [a, b] contributes n * scale^2 * (H(b) - H(a)) / (b - a),
        # i.e. scale^3 * sum over edges of density jump * H.  H is a polynomial outside the grid and a
        # line plus a periodic term inside it: the polynomial parts come from prefix sums of the jumps'
        # moments.
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
        cum, abs_jumps = self._cum.flat[:4], self._cum.flat[4]
        below = [c[at_lo] for c in cum]
        inside = [c[at_hi] - c[at_lo] for c in cum]
        above = [c[at_end] - c[at_hi] for c in cum]
        cube_below = lo**3 * below[0] - 3 * lo**2 * below[1] + 3 * lo * below[2] - below[3]
        cube_above = above[3] - 3 * hi * above[2] + 3 * hi**2 * above[1] - hi**3 * above[0]
        line = (inside[1] - lo * inside[0]) + (hi - lo) * above[0]
        smooth = scale**2 / 12.0 * line + self.clip_weight / 3.0 * (cube_above - cube_below)
        out += np.where(has_edges, smooth, 0.0)
        points = self._point_noise(g, rows, owner, tensors)
        widest = np.array([iv.widest for iv in ivs])
        fine = np.flatnonzero(has_edges & (widest[owner] < WIDE_BIN_STEPS * scale))
        scored = np.ones(rows.size, dtype=bool)
        if self.best_only and fine.size:
            # Edges outside the grid add nothing to the periodic term (their u is 0), so it lies within
            # +-bound; a candidate whose lowest possible noise exceeds another's highest is not scored.
            bound = np.zeros(rows.size)
            bound[fine] = scale[fine] ** 3 * _PERIODIC_MAX * (abs_jumps[at_hi[fine]] - abs_jumps[at_lo[fine]])
            approx = out + points
            # (fmin: a NaN candidate neither sets the bar nor is ruled out)
            best = np.maximum(np.fmin.reduceat(approx + bound, [s for s, _ in runs]), 0.0)[
                np.repeat(np.arange(len(runs)), [e - s for s, e in runs])
            ]
            low = approx - bound
            scored = ~(low - best > _PRUNE_SLACK * (np.abs(approx) + bound + best))
            fine = fine[scored[fine]]
        if fine.size:
            # Per tensor: the periodic term is a (candidates x edges) matrix times the jumps.
            periodic = np.empty(fine.size)
            fine_owner = owner[fine]
            for s, e in _runs(fine_owner):
                edges, jump = ivs[int(fine_owner[s])].edge_weights
                r = fine[s:e]
                # u * (u^2 / 3 - 1 / 12) with u = tc - rint(tc), in place in two reused buffers: these
                # arrays are the bulk of the work, and fresh temporaries cost more than the arithmetic.
                tc, u = self._buffers(r.size, edges.size)
                np.divide(edges[None, :], scale[r, None], out=tc)
                np.clip(tc, first[r, None], last[r, None], out=tc)
                np.rint(tc, out=u)
                np.subtract(tc, u, out=u)  # u = tc - rint(tc)
                np.multiply(u, u, out=tc)
                tc *= 1.0 / 3.0
                tc -= 1.0 / 12.0
                tc *= u  # u * (u * u / 3 - 1 / 12)
                periodic[s:e] = np.einsum("ij,j->i", tc, jump)  # (row by row: see _per_tensor_dot)
            out[fine] += scale[fine] ** 3 * periodic
        out += points
        out = np.maximum(out, 0.0)
        out[~scored] = np.inf
        return out

    def _point_noise(
        self, g: CandidateGrids, rows: np.ndarray, owner: np.ndarray, tensors: list[int]
    ) -> np.ndarray:
        """The noise of point masses (zero-width intervals) under each row's grid: their own error, no
        spreading."""
        out = np.zeros(rows.size)
        point_offset, n_points = self._points.locate(tensors)
        pointed = np.flatnonzero((n_points > 0)[owner])
        if pointed.size:
            scale, first, last = g.scale[rows], g.first[rows], g.last[rows]
            element_row, element, row_start = _expand(n_points[owner[pointed]], point_offset[owner[pointed]])
            r = pointed[element_row]
            lo_k, hi_k = first[r], last[r]
            tp = self._points.flat[0][element] / scale[r]
            q = np.clip(np.rint(tp), lo_k, hi_k)
            e2 = (tp - q) ** 2 * np.where((tp < lo_k) | (tp > hi_k), self.clip_weight, 1.0)
            flat_counts = self._points.flat[1]
            counts = [
                flat_counts[o : o + n] for o, n in zip(point_offset.tolist(), n_points.tolist(), strict=True)
            ]
            out[pointed] = scale[pointed] ** 2 * self._per_tensor_dot(e2, row_start, owner[pointed], counts)
        return out

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
        """Each row of ``flat`` (rows laid end to end) dotted with its tensor's vector: one product per
        tensor, summed row by row (einsum, unlike BLAS, sums a row the same way whatever rows are with
        it), so a row's number does not depend on the rest of the batch."""
        out = np.empty(owner.size)
        for s, e in _runs(owner):
            v = vectors[int(owner[s])]
            out[s:e] = np.einsum("ij,j->i", flat[row_start[s] : row_start[e]].reshape(e - s, v.size), v)
        return out
