"""mse: the range whose quantization grid gives the least expected mean squared error.

Rounding and clipping errors count alike; the grid scored for each candidate range is the one the
schema really produces (scale, rounded offset, integer limits).
"""

from __future__ import annotations

from opendlc.calibration import CalibrationMethod
from opendlc.calibration_search import MinimumNoiseMethod
from opendlc.hookspecs import hookimpl


class Mse(MinimumNoiseMethod):
    name = "mse"
    description = "searches the range of least expected mean squared quantization error"
    clip_weight = 1.0


@hookimpl
def register_calibration_methods() -> list[CalibrationMethod]:
    return [Mse()]
