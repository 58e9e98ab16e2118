"""sqnr: the range whose quantization grid gives the highest expected signal-to-quantization-noise ratio.

The signal power of a tensor does not depend on the range, so the best SQNR is the least noise.  Noise
is the expected squared error of quantize-dequantize on the schema's real grid for each candidate range,
with clipping errors counted three times (AIMET's SQNR calibration weights them so: a clipped outlier
hurts a network more than its squared error says).
"""

from __future__ import annotations

from opendlc.calibration import CalibrationMethod
from opendlc.calibration_search import MinimumNoiseMethod
from opendlc.hookspecs import hookimpl


class Sqnr(MinimumNoiseMethod):
    name = "sqnr"
    description = "searches the range of best expected SQNR (rounding noise + 3 x clipping noise)"
    clip_weight = 3.0


@hookimpl
def register_calibration_methods() -> list[CalibrationMethod]:
    return [Sqnr()]
