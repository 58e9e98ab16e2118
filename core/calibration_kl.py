"""KL divergence of candidate grids against a tensor's histogram (TensorRT-style entropy calibration).

One implementation serves one tensor (:func:`kl_divergence`) and many at once (:class:`KlOfMany`, which
a lockstep search uses): every element-wise step runs on all candidates' rows together and every
reduction runs per row, so a candidate's number does not depend on what else is in the batch.  Both
are public, re-exported by ``opendlc.calibration_search``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from opendlc.observers import TensorStats

if TYPE_CHECKING:  # (calibration_search imports this module; only the attributes are used here)
    from opendlc.calibration_search import CandidateGrids, GridBatch

__all__ = ["KlOfMany", "kl_divergence"]


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
    return KlOfMany([stats]).evaluate(grids, np.array([0, len(grids)]), np.array([0]))


def _xlogx(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)


# (rows x levels) cells evaluated at once: temporaries that stay in cache are faster than big ones
KL_CHUNK = 32768


class KlOfMany:
    """:func:`kl_divergence` of many tensors' candidates at once (a ``BatchCost`` for
    :func:`~opendlc.calibration_search.search_ranges`): ``stats[i]`` is the ``i``-th searched tensor.
    Each candidate gets exactly the number :func:`kl_divergence` gives it."""

    def __init__(self, stats: Sequence[TensorStats]) -> None:
        self.stats = stats
        self._nbins = np.array([s.hist.size for s in stats], dtype=np.int64)
        self._width = np.array([s.width for s in stats], dtype=np.float64)
        self._first_bin = np.array([s.first_bin for s in stats], dtype=np.float64)
        self._usable = np.zeros(len(stats), dtype=bool)
        self._total = np.zeros(len(stats))
        self._offset = np.zeros(len(stats), dtype=np.intp)
        # Per tensor, once: prefix sums of the counts, of the non-empty bins and of n log n, laid end to
        # end (tensor t's run starts at offset[t] and is nbins[t] + 1 long), so one gather serves all.
        # Histograms of one length are stacked: a row's cumsum is the same sequential sum as alone.
        flat: list[list[np.ndarray]] = [[], [], []]
        end = 0
        for size in np.unique(self._nbins).tolist():
            group = np.flatnonzero(self._nbins == size)
            n = np.stack([stats[t].hist for t in group.tolist()]).astype(np.float64).reshape(group.size, size)
            # The bin [0, width) holds the exact zeros (ReLU, padding).  Zero is a point of every grid,
            # so they lose nothing; but spread evenly over their cell (as Q is) a zero spike would
            # dominate the divergence.  Like ncnn's calibrator, leave it out.
            zero_bin = -self._first_bin[group].astype(np.int64)
            has_zero = (zero_bin >= 0) & (zero_bin < size)
            n[np.flatnonzero(has_zero), zero_bin[has_zero]] = 0.0
            empty = np.array([stats[t].empty for t in group.tolist()], dtype=bool)
            self._usable[group] = n.any(axis=1) & ~empty & (size >= 2)
            cums = []
            for values in (n, n > 0, _xlogx(n)):
                cum = np.zeros((group.size, size + 1))
                np.cumsum(values, axis=1, out=cum[:, 1:])
                cums.append(cum)
            for packed, cum in zip(flat, cums, strict=True):
                packed.append(cum.ravel())
            self._total[group] = cums[0][:, -1]
            self._offset[group] = end + (size + 1) * np.arange(group.size)
            end += group.size * (size + 1)
        self._cum_n, self._cum_nz, self._cum_nlogn = (np.concatenate(f) if f else np.zeros(0) for f in flat)

    def __call__(self, batch: GridBatch) -> np.ndarray:
        return self.evaluate(batch.grids, batch.starts, batch.tensors)

    def evaluate(self, grids: CandidateGrids, starts: np.ndarray, tensors: np.ndarray) -> np.ndarray:
        """The divergence of each row of ``grids``: rows ``starts[i]:starts[i + 1]`` are candidates of
        tensor ``tensors[i]``."""
        g = grids
        out = np.full(len(g), np.inf)
        starts, tensors = np.asarray(starts, dtype=np.intp), np.asarray(tensors, dtype=np.intp)
        sizes = np.diff(starts)
        if len(g) == 0 or not self._usable[tensors].any():
            return out
        owner = np.repeat(tensors, sizes)  # the tensor of each row
        ok = g.scale >= self._width[owner]
        levels = g.last - g.first + 1
        # A tensor is judged only if some grid's step is a bin or more, all its grids have the same
        # number of levels, and not more levels than bins (then no such grid lies within the histogram).
        judged = self._usable[tensors] & (sizes > 0)
        seg = starts[:-1][judged]
        lv0 = levels[seg]
        judged[judged] = (
            np.logical_or.reduceat(ok, seg)
            & (np.minimum.reduceat(levels, seg) == lv0)
            & (np.maximum.reduceat(levels, seg) == lv0)
            & (lv0 - 1 <= self._nbins[tensors[judged]])
        )
        rows = np.flatnonzero(ok & np.repeat(judged, sizes))
        for count in np.unique(levels[rows]).tolist():
            same = rows[levels[rows] == count]
            chunk = max(1, KL_CHUNK // int(count))
            for c in range(0, same.size, chunk):
                part = same[c : c + chunk]
                out[part] = self._kl(g, part, owner[part], int(count))
        return out

    def _kl(self, g: CandidateGrids, rows: np.ndarray, owner: np.ndarray, levels: int) -> np.ndarray:
        out = np.full(rows.size, np.inf)
        scale, first, last = g.scale[rows, None], g.first[rows, None], g.last[rows, None]
        w, first_bin = self._width[owner, None], self._first_bin[owner, None]
        nbins, offset = self._nbins[owner, None], self._offset[owner, None]
        cum_n, cum_nz, cum_nlogn = self._cum_n, self._cum_nz, self._cum_nlogn

        def bins_below(v: np.ndarray) -> np.ndarray:  # number of bins whose centre is < v
            return np.clip(np.ceil(v / w - first_bin - 0.5), 0, nbins).astype(np.int64)

        a = np.minimum(bins_below((first - 0.5) * scale), nbins - 1)  # first covered bin
        b = np.clip(bins_below((last + 0.5) * scale) - 1, 0, nbins - 1)  # last covered bin
        covered = (cum_n[offset + (b + 1)] - cum_n[offset + a])[:, 0]
        valid = np.flatnonzero((a[:, 0] < b[:, 0]) & (covered > 0))
        if not valid.size:
            return out
        scale, first, a, b, covered = scale[valid], first[valid], a[valid], b[valid], covered[valid]
        w, first_bin, nbins, offset = w[valid], first_bin[valid], nbins[valid], offset[valid]
        total = self._total[owner[valid]]
        # The cells' bin boundaries, bins_below((first + k - 0.5) * scale) for k = 1 .. levels - 1, with
        # the same operations in place: these (rows x levels) arrays are the bulk of the work.
        v = np.add(first, np.arange(1, levels, dtype=np.float64)[None, :])
        v -= 0.5
        v *= scale
        v /= w
        v -= first_bin
        v -= 0.5
        np.ceil(v, out=v)
        np.clip(v, 0, nbins, out=v)
        bounds = np.empty((valid.size, levels + 1), dtype=np.int64)
        bounds[:, 0], bounds[:, -1] = 0, nbins[:, 0]
        bounds[:, 1:-1] = v
        inner = bounds[:, 1:-1]
        pa = cum_n[offset + (a + 1)]  # P's first bin: its own values and everything below
        pb = total[:, None] - cum_n[offset + b]  # P's last bin: its own values and everything above
        # Every cell's mass -- of Q (the unfolded histogram), of P, and P's count of non-empty bins -- is
        # a sum of integer counts, exact in float64 in any order: so P is Q's cells with the folded mass
        # added to the cells holding bins a and b, not a second pass over all cells.
        inside = offset + np.clip(bounds, a, b + 1)
        q_mass = np.diff(cum_n[inside], axis=1)  # the cells' mass without the folded values
        nonempty = np.diff(cum_nz[inside], axis=1)
        row = np.arange(valid.size)
        cell_a = np.count_nonzero(inner <= a, axis=1)  # the cell of bin a, and of bin b
        cell_b = np.count_nonzero(inner <= b, axis=1)
        p_mass = q_mass.copy()
        p_mass[row, cell_a] += cum_n[offset + a][:, 0]
        p_mass[row, cell_b] += (total[:, None] - cum_n[offset + (b + 1)])[:, 0]
        nz_a = cum_nz[offset + (a + 1)] - cum_nz[offset + a]  # bins a and b non-empty before folding
        nz_b = cum_nz[offset + (b + 1)] - cum_nz[offset + b]
        nonempty[row, cell_a] += ((pa > 0) * 1.0 - nz_a)[:, 0]
        nonempty[row, cell_b] += ((pb > 0) * 1.0 - nz_b)[:, 0]
        np.maximum(q_mass, 1e-4 * nonempty, out=q_mass)
        has = p_mass > 0
        # sum over cells of p_mass * log(q_mass / nonempty), the cells without P-mass adding 0 * log(1)
        term = np.ones_like(q_mass)
        np.divide(q_mass, nonempty, out=term, where=has)
        np.log(term, out=term)
        term *= p_mass
        p_log_p = _xlogx(pa) + (cum_nlogn[offset + b] - cum_nlogn[offset + (a + 1)]) + _xlogx(pb)
        with np.errstate(divide="ignore"):
            kl = (p_log_p[:, 0] - np.sum(term, axis=1)) / total
            kl += np.log(covered) - np.log(total)
        out[valid] = np.maximum(kl, 0.0)
        return out
