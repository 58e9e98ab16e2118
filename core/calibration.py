"""Calibration methods: choosing a range from a tensor's statistics.

A calibration method sees only the :class:`~opendlc.observers.TensorStats` the observer collected and
the target encoding (bitwidth, schema); it returns (min, max).  The schema then turns that range into
scale/offset.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from opendlc.observers import TensorStats
from opendlc.schemas import QuantizationSchema


@dataclass(frozen=True)
class CalibrationOptions:
    """Options some calibration methods read."""

    percentile: float = 99.99  # --percentile_calibration_value, in [90, 100]
    # --restrict_quantization_steps (qmin, qmax) when the encoding will be made with it, so methods
    # that search score the grid the schema will really produce; None: the bitwidth's full range.
    steps: tuple[int, int] | None = None


class CalibrationMethod(ABC):
    """Chooses the range of an encoding.  Subclasses are registered through a plugin."""

    name: str
    description: str
    # Whether the method reads the histogram; methods that do not let calibration skip building it.
    needs_histogram: bool = True

    @abstractmethod
    def choose_range(
        self, stats: TensorStats, *, bitwidth: int, schema: QuantizationSchema, options: CalibrationOptions
    ) -> tuple[float, float]:
        """The (min, max) range to encode, given the collected statistics."""

    def choose_ranges(
        self,
        stats: Sequence[TensorStats],
        *,
        bitwidth: int,
        schema: QuantizationSchema,
        options: CalibrationOptions,
    ) -> list[tuple[float, float]]:
        """:meth:`choose_range` of many tensors (same bitwidth, schema and options).  Methods that
        search may override it to work on all tensors at once; the ranges must be the same."""
        return [self.choose_range(s, bitwidth=bitwidth, schema=schema, options=options) for s in stats]
