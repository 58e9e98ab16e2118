"""Encodings and quantization schemas: turning a chosen range into scale and offset.

Conventions are QNN's: ``real = scale * (q + offset)``, so ``offset = -zero_point`` and ``offset <= 0``
for asymmetric encodings.  Zero is always exactly representable.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

# Scale used when a range is empty (constant-zero tensor): any positive scale represents 0 exactly.
DEGENERATE_SCALE = 1.0 / 255.0 * 1e-4


@dataclass(frozen=True)
class Encoding:
    """A fixed-point encoding of one tensor or one channel of it."""

    bitwidth: int
    scale: float
    offset: int
    min: float
    max: float
    is_symmetric: bool = False
    # Signed storage (int8/int16) for symmetric encodings, unsigned otherwise.
    signed: bool = False

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bitwidth - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bitwidth - 1) - 1 if self.signed else 2**self.bitwidth - 1

    @property
    def zero_point(self) -> int:
        """ONNX convention: ``real = (q - zero_point) * scale``, in the storage type's range."""
        return -self.offset

    def quantize_dequantize(self, x):  # numpy in, numpy out
        import numpy as np

        q = np.clip(
            np.round(np.asarray(x, dtype=np.float64) / self.scale) - self.offset, self.qmin, self.qmax
        )
        return ((q + self.offset) * self.scale).astype(np.float32)


class QuantizationSchema(ABC):
    """Turns a range into an :class:`Encoding`.  Subclasses are registered through a plugin."""

    name: str
    description: str
    symmetric: bool

    @abstractmethod
    def encode(
        self, lo: float, hi: float, bitwidth: int, *, steps: tuple[int, int] | None = None
    ) -> Encoding:
        """The encoding of range [lo, hi] at ``bitwidth``.

        ``steps`` (from ``--restrict_quantization_steps``) gives the (qmin, qmax) integer range to use
        instead of the full range of the bitwidth; only symmetric schemas take it.
        """


def sanitize_range(lo: float, hi: float) -> tuple[float, float]:
    """Make a range finite and containing zero, so zero stays exactly representable."""
    lo = 0.0 if not math.isfinite(lo) else lo
    hi = 0.0 if not math.isfinite(hi) else hi
    return min(lo, 0.0), max(hi, 0.0)
