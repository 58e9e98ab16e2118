"""The symmetric schema: signed integers, offset 0, range [-absmax, absmax]."""

from __future__ import annotations

import numpy as np

from opendlc.hookspecs import hookimpl
from opendlc.schemas import (
    EncodedRanges,
    Encoding,
    QuantizationSchema,
    encodings_of,
    symmetric_encodings,
)


class Symmetric(QuantizationSchema):
    name = "symmetric"
    description = "signed integers, offset 0; scale = max(|min|, |max|) / (2^(b-1) - 1)"
    symmetric = True

    def encode_each(
        self, lo: np.ndarray, hi: np.ndarray, bitwidth: int, *, steps: tuple[int, int] | None = None
    ) -> list[Encoding]:
        return encodings_of(self.encode_many(lo, hi, bitwidth, steps=steps), bitwidth, True, signed=True)

    def encode_many(
        self, lo: np.ndarray, hi: np.ndarray, bitwidth: int, *, steps: tuple[int, int] | None = None
    ) -> EncodedRanges:
        return symmetric_encodings(lo, hi, bitwidth, steps)


@hookimpl
def register_quantization_schemas() -> list[QuantizationSchema]:
    return [Symmetric()]
