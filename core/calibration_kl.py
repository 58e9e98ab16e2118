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
KL_CHUNK = 16384


class KlOfMany:
    """:func:`kl_divergence` of many tensors' candidates at once (a ``BatchCost`` for
    :func:`~opendlc.calibration_search.search_ranges`): ``stats[i]`` is the ``i``-th searched tensor.
    Each candidate gets exactly the number :func:`kl_divergence` gives it."""

    def __init__(self, stats: Sequence[TensorStats]) -> None:
        self.stats = stats
        # Per tensor, once: prefix sums of the counts, of the non-empty bins and of n log n, laid end
        # to end (tensor t's run starts at offset[t] and is nbins[t] + 1 long), so one gather serves all.
        cum_n, cum_nz, cum_nlogn = [], [], []
        usable = []
        for s in stats:
            n = s.hist.astype(np.float64)
            zero_bin = -s.first_bin  # the bin [0, width): exact zeros (ReLU, padding) land there
            if 0 <= zero_bin < n.size:
                # Zero is a point of every grid, so exact zeros lose nothing; but spread evenly over their
                # cell (as Q is) a zero spike would dominate the divergence.  Like ncnn's calibrator,
                # leave it out.
                n[zero_bin] = 0.0
            usable.append(bool(n.any()) and not s.empty and n.size >= 2)
            cum_n.append(np.concatenate(([0.0], np.cumsum(n))))
            cum_nz.append(np.concatenate(([0.0], np.cumsum(n > 0))))
            cum_nlogn.append(np.concatenate(([0.0], np.cumsum(_xlogx(n)))))
        self._usable = np.array(usable, dtype=bool)
        self._nbins = np.array([s.hist.size for s in stats], dtype=np.int64)
        self._offset = np.concatenate(([0], np.cumsum(self._nbins + 1)[:-1])).astype(np.intp)
        self._width = np.array([s.width for s in stats], dtype=np.float64)
        self._first_bin = np.array([s.first_bin for s in stats], dtype=np.float64)
        self._total = np.array([c[-1] for c in cum_n], dtype=np.float64)
        self._cum_n, self._cum_nz, self._cum_nlogn = (
            np.concatenate(c) if c else np.zeros(0) for c in (cum_n, cum_nz, cum_nlogn)
        )

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
        scale, first, last = g.scale[rows, None], g.first[rows, None], g.last[rows, None]
        w, first_bin = self._width[owner, None], self._first_bin[owner, None]
        nbins, offset = self._nbins[owner, None], self._offset[owner, None]
        total = self._total[owner]
        cum_n, cum_nz, cum_nlogn = self._cum_n, self._cum_nz, self._cum_nlogn

        def bins_below(v: np.ndarray) -> np.ndarray:  # number of bins whose centre is < v
            return np.clip(np.ceil(v / w - first_bin - 0.5), 0, nbins).astype(np.int64)

        a = np.minimum(bins_below((first - 0.5) * scale), nbins - 1)  # first covered bin
        b = np.clip(bins_below((last + 0.5) * scale) - 1, 0, nbins - 1)  # last covered bin
        k = np.arange(1, levels, dtype=np.float64)[None, :]
        inner = bins_below((first + k - 0.5) * scale)  # bin boundaries between cells
        bounds = np.concatenate([np.zeros_like(a), inner, nbins + np.zeros_like(a)], axis=1)
        pa = cum_n[offset + (a + 1)]  # P's first bin: its own values and everything below
        pb = total[:, None] - cum_n[offset + b]  # P's last bin: its own values and everything above
        mid = offset + np.clip(bounds, a + 1, b)
        at_a1 = offset + (a + 1)

        def p_prefix(cum: np.ndarray, first_bin: np.ndarray, last_bin: np.ndarray) -> np.ndarray:
            return (bounds > a) * first_bin + (cum[mid] - cum[at_a1]) + (bounds > b) * last_bin

        p_mass = np.diff(p_prefix(cum_n, pa, pb), axis=1)
        nonempty = np.diff(p_prefix(cum_nz, (pa > 0) * 1.0, (pb > 0) * 1.0), axis=1)
        inside = offset + np.clip(bounds, a, b + 1)
        q_mass = np.diff(cum_n[inside], axis=1)  # the cells' mass without the folded values
        q_mass = np.maximum(q_mass, 1e-4 * nonempty)
        has = p_mass > 0
        log_q = np.log(np.where(has, q_mass, 1.0) / np.where(has, nonempty, 1.0))
        p_log_p = _xlogx(pa) + (cum_nlogn[offset + b] - cum_nlogn[at_a1]) + _xlogx(pb)
        covered = (cum_n[offset + (b + 1)] - cum_n[offset + a])[:, 0]
        with np.errstate(divide="ignore"):
            kl = (p_log_p[:, 0] - np.sum(np.where(has, p_mass * log_q, 0.0), axis=1)) / total
            kl += np.log(covered) - np.log(total)
        valid = (a[:, 0] < b[:, 0]) & (covered > 0)
        return np.where(valid, np.maximum(kl, 0.0), np.inf)
