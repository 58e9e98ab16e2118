"""Encodings and quantization schemas: turning a chosen range into scale and offset.

Conventions are QNN's: ``real = scale * (q + offset)``, so ``offset = -zero_point`` and ``offset <= 0``
for asymmetric encodings.  Zero is always exactly representable.
"""

from __future__ import annotations

import math
from abc import ABC
from dataclasses import dataclass

import numpy as np

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
        q = np.clip(
            np.round(np.asarray(x, dtype=np.float64) / self.scale) - self.offset, self.qmin, self.qmax
        )
        return ((q + self.offset) * self.scale).astype(np.float32)


class QuantizationSchema(ABC):
    """Turns a range into an :class:`Encoding`.  Subclasses are registered through a plugin.

    A subclass implements :meth:`encode` (one range) or :meth:`encode_each` (many at once); each
    defaults to the other.  :meth:`encode_many` gives the numbers alone, for range searches.
    """

    name: str
    description: str
    symmetric: bool

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.encode is QuantizationSchema.encode and cls.encode_each is QuantizationSchema.encode_each:
            raise TypeError(f"{cls.__name__} must implement encode or encode_each")

    def encode(
        self, lo: float, hi: float, bitwidth: int, *, steps: tuple[int, int] | None = None
    ) -> Encoding:
        """The encoding of range [lo, hi] at ``bitwidth``.

        ``steps`` (from ``--restrict_quantization_steps``) gives the (qmin, qmax) integer range to use
        instead of the full range of the bitwidth; only symmetric schemas take it.
        """
        return self.encode_each(np.array([lo]), np.array([hi]), bitwidth, steps=steps)[0]

    def encode_each(
        self, lo: np.ndarray, hi: np.ndarray, bitwidth: int, *, steps: tuple[int, int] | None = None
    ) -> list[Encoding]:
        """:meth:`encode` of each of many ranges (per-channel candidates come by the hundred).  The
        built-in schemas build the encodings from :meth:`encode_many` with :func:`encodings_of`."""
        return [
            self.encode(a, b, bitwidth, steps=steps)
            for a, b in zip(np.ravel(lo).tolist(), np.ravel(hi).tolist(), strict=True)
        ]

    def encode_many(
        self, lo: np.ndarray, hi: np.ndarray, bitwidth: int, *, steps: tuple[int, int] | None = None
    ) -> EncodedRanges:
        """What :meth:`encode` gives for each of many ranges (range searches score hundreds of
        candidates per tensor).  This default asks :meth:`encode` one range at a time; a schema may
        override it with array arithmetic giving exactly the same numbers."""
        encs = [
            self.encode(a, b, bitwidth, steps=steps) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)
        ]
        return EncodedRanges(
            np.array([e.scale for e in encs], dtype=np.float64),
            np.array([e.offset for e in encs], dtype=np.int64),
            np.array([e.qmin for e in encs], dtype=np.int64),
            np.array([e.qmax for e in encs], dtype=np.int64),
        )


@dataclass(frozen=True)
class EncodedRanges:
    """Scale, offset and integer limits of many encodings (one entry per range)."""

    scale: np.ndarray
    offset: np.ndarray
    qmin: np.ndarray
    qmax: np.ndarray


def encodings_of(
    ranges: EncodedRanges, bitwidth: int, symmetric: bool, *, signed: bool | None = None
) -> list[Encoding]:
    """The encodings of many encoded ranges: min and max are the grid's ends; storage is ``signed``, by
    default signed exactly for grids reaching below zero."""
    return [
        Encoding(
            bitwidth,
            scale,
            offset,
            (offset + qmin) * scale,
            (offset + qmax) * scale,
            symmetric,
            qmin < 0 if signed is None else signed,
        )
        for scale, offset, qmin, qmax in zip(
            ranges.scale.tolist(),
            ranges.offset.tolist(),
            ranges.qmin.tolist(),
            ranges.qmax.tolist(),
            strict=True,
        )
    ]


def sanitize_range(lo: float, hi: float) -> tuple[float, float]:
    """Make a range finite and containing zero, so zero stays exactly representable."""
    lo = 0.0 if not math.isfinite(lo) else lo
    hi = 0.0 if not math.isfinite(hi) else hi
    return min(lo, 0.0), max(hi, 0.0)


def sanitize_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sanitize_range` of many ranges."""
    lo = np.minimum(np.where(np.isfinite(lo), lo, 0.0), 0.0)
    hi = np.maximum(np.where(np.isfinite(hi), hi, 0.0), 0.0)
    return lo, hi


def symmetric_encodings(
    lo: np.ndarray, hi: np.ndarray, bitwidth: int, steps: tuple[int, int] | None
) -> EncodedRanges:
    """Signed symmetric encodings of many ranges: offset 0, range [-absmax, absmax]; with ``steps``
    (qmin, qmax) the scale spreads 2 * absmax over that many steps."""
    lo, hi = sanitize_ranges(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
    absmax = np.maximum(-lo, hi)
    if steps is None:
        qmin, qmax = -(2 ** (bitwidth - 1)), 2 ** (bitwidth - 1) - 1
        scale = absmax / qmax  # keeps -absmax representable too (q = -qmax)
    else:
        qmin, qmax = steps
        scale = 2 * absmax / (qmax - qmin)  # "scale = (max - min) / number of quantization steps"
    scale = np.where(scale > 0, scale, DEGENERATE_SCALE)
    n = scale.size
    return EncodedRanges(scale, np.zeros(n, dtype=np.int64), np.full(n, qmin), np.full(n, qmax))
