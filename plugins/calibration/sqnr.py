"""sqnr: the range whose quantization grid gives the highest expected signal-to-quantization-noise ratio.

The signal power of a tensor does not depend on the range, so the best SQNR is the least noise.  Noise
is the expected squared error of quantize-dequantize on the schema's real grid for each candidate range,
with clipping errors counted three times (AIMET's SQNR calibration weights them so: a clipped outlier
hurts a network more than its squared error says).
"""

from __future__ import annotations

from collections.abc import Sequence

from opendlc.calibration import CalibrationMethod, CalibrationOptions
from opendlc.calibration_search import minimum_noise_range, minimum_noise_ranges
from opendlc.hookspecs import hookimpl
from opendlc.observers import TensorStats
from opendlc.schemas import QuantizationSchema

CLIP_WEIGHT = 3.0


class Sqnr(CalibrationMethod):
    name = "sqnr"
    description = "searches the range of best expected SQNR (rounding noise + 3 x clipping noise)"

    def __init__(self, clip_weight: float = CLIP_WEIGHT) -> None:
        self.clip_weight = clip_weight

    def choose_range(
        self, stats: TensorStats, *, bitwidth: int, schema: QuantizationSchema, options: CalibrationOptions
    ) -> tuple[float, float]:
        return minimum_noise_range(stats, schema, bitwidth, clip_weight=self.clip_weight, steps=options.steps)

    def choose_ranges(
        self,
        stats: Sequence[TensorStats],
        *,
        bitwidth: int,
        schema: QuantizationSchema,
        options: CalibrationOptions,
    ) -> list[tuple[float, float]]:
        return minimum_noise_ranges(
            stats, schema, bitwidth, clip_weight=self.clip_weight, steps=options.steps
        )


@hookimpl
def register_calibration_methods() -> list[CalibrationMethod]:
    return [Sqnr()]
