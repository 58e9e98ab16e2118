"""min-max (the SDK's ``tf`` quantizer): the range is the smallest and largest value seen."""

from __future__ import annotations

from opendlc.calibration import CalibrationMethod, CalibrationOptions
from opendlc.hookspecs import hookimpl
from opendlc.observers import TensorStats
from opendlc.schemas import QuantizationSchema


class MinMax(CalibrationMethod):
    name = "min-max"
    description = "the observed minimum and maximum (the SDK's 'tf' quantizer)"
    needs_histogram = False

    def choose_range(
        self, stats: TensorStats, *, bitwidth: int, schema: QuantizationSchema, options: CalibrationOptions
    ) -> tuple[float, float]:
        if stats.empty:
            return 0.0, 0.0
        return stats.min, stats.max


@hookimpl
def register_calibration_methods() -> list[CalibrationMethod]:
    return [MinMax()]
