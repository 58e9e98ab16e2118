"""Calibration methods: choosing a range from a tensor's statistics.

A calibration method sees only the :class:`~opendlc.observers.TensorStats` the observer collected and
the target encoding (bitwidth, schema); it returns (min, max).  The schema then turns that range into
scale/offset.
"""

from __future__ import annotations

from abc import ABC
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
    """Chooses the range of an encoding.  Subclasses are registered through a plugin.

    A subclass implements :meth:`choose_range` (one tensor) or :meth:`choose_ranges` (many at once, for
    methods that search and gain from scoring all tensors together); each defaults to the other.
    """

    name: str
    description: str
    # Whether the method reads the histogram; methods that do not let calibration skip building it.
    needs_histogram: bool = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if (
            cls.choose_range is CalibrationMethod.choose_range
            and cls.choose_ranges is CalibrationMethod.choose_ranges
        ):
            raise TypeError(f"{cls.__name__} must implement choose_range or choose_ranges")

    def choose_range(
        self, stats: TensorStats, *, bitwidth: int, schema: QuantizationSchema, options: CalibrationOptions
    ) -> tuple[float, float]:
        """The (min, max) range to encode, given the collected statistics."""
        return self.choose_ranges([stats], bitwidth=bitwidth, schema=schema, options=options)[0]

    def choose_ranges(
        self,
        stats: Sequence[TensorStats],
        *,
        bitwidth: int,
        schema: QuantizationSchema,
        options: CalibrationOptions,
    ) -> list[tuple[float, float]]:
        """:meth:`choose_range` of many tensors (same bitwidth, schema and options); the ranges must be
        those :meth:`choose_range` gives each tensor alone."""
        return [self.choose_range(s, bitwidth=bitwidth, schema=schema, options=options) for s in stats]
