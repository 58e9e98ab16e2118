"""The unsigned-symmetric schema: unsigned, offset 0 for non-negative data; symmetric otherwise."""

from __future__ import annotations

import numpy as np

from opendlc.hookspecs import hookimpl
from opendlc.schemas import (
    DEGENERATE_SCALE,
    EncodedRanges,
    Encoding,
    QuantizationSchema,
    encodings_of,
    sanitize_ranges,
    symmetric_encodings,
)


class UnsignedSymmetric(QuantizationSchema):
    name = "unsignedsymmetric"
    description = "non-negative data: unsigned integers over [0, max], offset 0; otherwise symmetric"
    symmetric = True

    def encode_each(
        self, lo: np.ndarray, hi: np.ndarray, bitwidth: int, *, steps: tuple[int, int] | None = None
    ) -> list[Encoding]:
        return encodings_of(self.encode_many(lo, hi, bitwidth, steps=steps), bitwidth, True)

    def encode_many(
        self, lo: np.ndarray, hi: np.ndarray, bitwidth: int, *, steps: tuple[int, int] | None = None
    ) -> EncodedRanges:
        lo, hi = sanitize_ranges(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
        signed = symmetric_encodings(lo, hi, bitwidth, steps)
        qmax = 2**bitwidth - 1
        unsigned = np.where(hi > 0, hi / qmax, DEGENERATE_SCALE)
        negative = lo < 0
        return EncodedRanges(
            np.where(negative, signed.scale, unsigned),
            signed.offset,
            np.where(negative, signed.qmin, 0),
            np.where(negative, signed.qmax, qmax),
        )


@hookimpl
def register_quantization_schemas() -> list[QuantizationSchema]:
    return [UnsignedSymmetric()]
