"""mse: the range whose quantization grid gives the least expected mean squared error.

Rounding and clipping errors count alike; the grid scored for each candidate range is the one the
schema really produces (scale, rounded offset, integer limits).
"""

from __future__ import annotations

from collections.abc import Sequence

from opendlc.calibration import CalibrationMethod, CalibrationOptions
from opendlc.calibration_search import minimum_noise_range, minimum_noise_ranges
from opendlc.hookspecs import hookimpl
from opendlc.observers import TensorStats
from opendlc.schemas import QuantizationSchema


class Mse(CalibrationMethod):
    name = "mse"
    description = "searches the range of least expected mean squared quantization error"

    def choose_range(
        self, stats: TensorStats, *, bitwidth: int, schema: QuantizationSchema, options: CalibrationOptions
    ) -> tuple[float, float]:
        return minimum_noise_range(stats, schema, bitwidth, clip_weight=1.0, steps=options.steps)

    def choose_ranges(
        self,
        stats: Sequence[TensorStats],
        *,
        bitwidth: int,
        schema: QuantizationSchema,
        options: CalibrationOptions,
    ) -> list[tuple[float, float]]:
        return minimum_noise_ranges(stats, schema, bitwidth, clip_weight=1.0, steps=options.steps)


@hookimpl
def register_calibration_methods() -> list[CalibrationMethod]:
    return [Mse()]
