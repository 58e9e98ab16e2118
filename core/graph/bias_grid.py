"""Putting equalized biases on the quantizer's bias grid, by exact per-channel rescaling.

Cross-layer equalization divides output channel ``i`` of Conv1 (weights *and* bias) by ``s_i``.  The
balance ``s_i = sqrt(r1_i / r2_i)`` is a flat optimum for the weights, but with a narrow bias encoding
(the SDK's default: 8 bits, per tensor, from the bias's own range) it decides where each bias falls
between two grid points, and that rounding error is a fixed offset added to every output of the
channel.  Measured on PP-OCR cls, equalization made this error 4.3 dB worse than in the model as shipped
(biases-only 8-bit rounding: 33.5 -> 29.2 dB output SQNR against FP32).

Any further positive per-channel factor ``f_i`` across the same pair is exact too, so a factor within a
few percent of the balance can put the channel's bias exactly on a grid point: ``b_i / f_i`` equal to
the grid value nearest to ``b_i``.  A factor is used only if it keeps both weight tensors within their
current per-tensor range (so no weight encoding gets coarser) and stays within ``tolerance`` of 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# values -> the values after the quantizer's quantize-dequantize of that bias tensor (its own encoding)
BiasGrid = Callable[[np.ndarray], np.ndarray]


def rounding_error(bias: np.ndarray, grid: BiasGrid) -> float:
    """Sum of squares of what the bias grid moves the values by."""
    b = bias.astype(np.float64)
    return float(np.sum((np.asarray(grid(b), dtype=np.float64) - b) ** 2))


def grid_factors(
    bias: np.ndarray, grid: BiasGrid, lower: np.ndarray, upper: np.ndarray, rounds: int = 8
) -> np.ndarray:
    """Per-channel factors ``f`` (``lower <= f <= upper`` where ``f != 1``) after which ``bias / f`` rounds
    on ``grid`` with as little error as found.

    The grid is the bias's own encoding, so moving its extreme channels moves the grid: the snap is
    repeated on the new grid a few times and the best round kept (the unchanged bias included)."""
    b = bias.astype(np.float64).reshape(-1)
    f = np.ones_like(b)
    best, best_error = f, rounding_error(b, grid)
    for _ in range(rounds):
        current = b / f
        target = np.asarray(grid(current), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            wanted = b / target  # the total factor that puts the channel on its nearest grid value
        usable = (target != 0) & (np.sign(target) == np.sign(b)) & (wanted >= lower) & (wanted <= upper)
        moved = np.where(usable, wanted, f)
        if np.array_equal(moved, f):
            break
        f = moved
        error = rounding_error(b / f, grid)
        if error < best_error:
            best, best_error = f, error
    return best


def factor_limits(out1: np.ndarray, in2: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on ``f`` per channel so that Conv1's output channel (divided by ``f``) and Conv2's input
    channel (multiplied by ``f``) stay within their tensors' per-tensor [min, max], and
    ``1 / (1 + tolerance) <= f <= 1 + tolerance``.

    ``out1`` / ``in2`` are (channels, values) views of Conv1's output and Conv2's input channels."""
    lo1, hi1 = out1.min(axis=1), out1.max(axis=1)
    lo2, hi2 = in2.min(axis=1), in2.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Conv1 / f grows as f shrinks: f >= hi1_i / max(W1) and f >= lo1_i / min(W1)
        lower = np.maximum(np.where(hi1 > 0, hi1 / out1.max(), 0.0), np.where(lo1 < 0, lo1 / out1.min(), 0.0))
        # Conv2 * f grows as f grows: f <= max(W2) / hi2_i and f <= min(W2) / lo2_i
        upper = np.minimum(
            np.where(hi2 > 0, in2.max() / hi2, np.inf), np.where(lo2 < 0, in2.min() / lo2, np.inf)
        )
    return np.maximum(lower, 1 / (1 + tolerance)), np.minimum(upper, 1 + tolerance)
