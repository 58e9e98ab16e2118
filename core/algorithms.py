"""Model-level algorithms (cross-layer equalization and the like)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import onnx

from opendlc.errors import UsageError


class Phase(StrEnum):
    """When an algorithm runs."""

    BEFORE_CALIBRATION = "before-calibration"  # rewrites the float graph
    AFTER_CALIBRATION = "after-calibration"  # adjusts encodings or parameters once ranges are known


class Algorithm(ABC):
    """A named transformation; subclasses are registered through a plugin."""

    name: str
    description: str
    phase: Phase

    @abstractmethod
    def apply(self, model: onnx.ModelProto, context: Any) -> onnx.ModelProto:
        """Return the transformed model; the float function must be kept unless documented."""


@dataclass
class CalibrationContext:
    """What an AFTER_CALIBRATION algorithm receives as ``context``.

    ``samples`` holds the first few calibration samples (at most ``RETAINED_SAMPLES``: memory stays
    bounded); ``encodings`` is the :class:`~opendlc.encodings.EncodingSet` so far.  An algorithm that
    changes biases need not re-encode them: the engine re-derives bias encodings afterwards.
    """

    options: Any
    encodings: Any
    samples: list[dict[str, Any]] = field(default_factory=list)
    report: list[str] = field(default_factory=list)


RETAINED_SAMPLES = 8


def calibration_context(context: Any, algorithm: str) -> CalibrationContext:
    """``context`` as a :class:`CalibrationContext` with samples, or a one-line error naming the
    ``algorithm`` that needs them (it was run without an input list)."""
    if not isinstance(context, CalibrationContext) or not context.samples:
        raise UsageError(f"{algorithm} needs calibration samples (an --input_list)")
    return context
