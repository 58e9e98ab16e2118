"""adjusted: the SDK's "adjusted TF" weights quantizer (``--use_adjusted_weights_quantizer``).

The SDK documents it only as "the adjusted tf quantizer for quantizing the weights only", for 8-bit
weights, that "might be helpful for improving the accuracy of some models"; its exact rule is not
public.  This is an openly specified equivalent of what the name describes, a min-max ("tf") range,
adjusted: min-max keeps zero exact by rounding the offset, which can push the smallest or largest
weight up to half a step outside the grid, where it is clipped.  Here the range is widened instead --
never narrowed -- so that zero is a grid point and both extremes lie on the grid: for every integer
offset near the min-max one, the smallest step whose grid covers [min, max] (one extreme then lands on
a grid point, to float32 rounding), keeping the one of least expected squared error.  Symmetric
grids already cover [-max|x|, max|x|], so there it is min-max.
It works at any bitwidth; the SDK applies it to 8-bit weights only.
"""

from __future__ import annotations

import numpy as np

from opendlc.calibration import CalibrationMethod, CalibrationOptions
from opendlc.calibration_search import CandidateGrids, Intervals, expected_noise, trivial_range
from opendlc.hookspecs import hookimpl
from opendlc.observers import TensorStats
from opendlc.schemas import QuantizationSchema

OFFSET_RADIUS = 8  # offsets tried on each side of the min-max one


class Adjusted(CalibrationMethod):
    name = "adjusted"
    description = "min-max widened until zero and both extremes lie on the grid (SDK adjusted weights)"

    def choose_range(
        self, stats: TensorStats, *, bitwidth: int, schema: QuantizationSchema, options: CalibrationOptions
    ) -> tuple[float, float]:
        trivial = trivial_range(stats)
        if trivial is not None or schema.symmetric:
            return trivial if trivial is not None else (stats.min, stats.max)
        lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
        full = schema.encode(lo, hi, bitwidth)
        steps = full.qmax - full.qmin
        centre = int(np.round(lo / ((hi - lo) / steps)))
        offsets = np.arange(centre - OFFSET_RADIUS, centre + OFFSET_RADIUS + 1, dtype=np.float64)
        offsets = offsets[(offsets >= -steps) & (offsets <= 0)]
        with np.errstate(divide="ignore", invalid="ignore"):
            need_lo = np.where(offsets < 0, lo / offsets, np.where(lo < 0, np.inf, 0.0))
            need_hi = np.where(offsets + steps > 0, hi / (offsets + steps), np.where(hi > 0, np.inf, 0.0))
        step = np.maximum(need_lo, need_hi)
        usable = np.isfinite(step) & (step > 0)
        if not usable.any():
            return stats.min, stats.max
        offsets, step = offsets[usable], step[usable]
        # a hair wider than exact, so float32 rounding in the schema cannot clip the extreme again
        step = step * (1.0 + 1e-6)
        grids = CandidateGrids.from_ranges(schema, bitwidth, offsets * step, (offsets + steps) * step)
        covers = (grids.first * grids.scale <= lo) & (grids.last * grids.scale >= hi)
        if not covers.any():
            return stats.min, stats.max
        noise = np.where(covers, expected_noise(Intervals.of(stats), grids), np.inf)
        best = int(np.argmin(noise))
        return float(grids.lo[best]), float(grids.hi[best])


@hookimpl
def register_calibration_methods() -> list[CalibrationMethod]:
    return [Adjusted()]
