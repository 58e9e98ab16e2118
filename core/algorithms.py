"""Model-level algorithms (cross-layer equalization and the like)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from typing import Any

import onnx


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
