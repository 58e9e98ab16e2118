"""percentile: the ``--percentile_calibration_value`` percentile of the values on each side.

Asymmetric schemas get the (100 - p) and p percentiles of the values; symmetric schemas the p
percentile of their magnitudes, kept within the observed range so that data of one sign stays
one-sided (``unsignedsymmetric`` can then still use its unsigned grid).  Percentiles are interpolated
within a histogram bin.
"""

from __future__ import annotations

import math

from opendlc.calibration import CalibrationMethod, CalibrationOptions
from opendlc.calibration_search import quantile, trivial_range
from opendlc.hookspecs import hookimpl
from opendlc.observers import TensorStats
from opendlc.schemas import QuantizationSchema


class Percentile(CalibrationMethod):
    name = "percentile"
    description = "the p-th percentile of each side (of |x| for symmetric schemas)"

    def choose_range(
        self, stats: TensorStats, *, bitwidth: int, schema: QuantizationSchema, options: CalibrationOptions
    ) -> tuple[float, float]:
        trivial = trivial_range(stats)
        if trivial is not None:
            return trivial
        p = float(options.percentile)
        p = min(max(p, 0.0), 100.0) / 100.0 if math.isfinite(p) else 1.0
        if schema.symmetric:
            magnitude = quantile(stats, p, absolute=True)
            return max(stats.min, -magnitude), min(stats.max, magnitude)
        return quantile(stats, 1.0 - p), quantile(stats, p)


@hookimpl
def register_calibration_methods() -> list[CalibrationMethod]:
    return [Percentile()]
