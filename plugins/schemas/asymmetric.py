"""The asymmetric schema: the full integer range spans [min, max] (widened to include zero)."""

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
)


class Asymmetric(QuantizationSchema):
    name = "asymmetric"
    description = "unsigned integers over [min, max] including zero; offset = round(min / scale)"
    symmetric = False

    def encode_each(
        self, lo: np.ndarray, hi: np.ndarray, bitwidth: int, *, steps: tuple[int, int] | None = None
    ) -> list[Encoding]:
        return encodings_of(self.encode_many(lo, hi, bitwidth), bitwidth, False)

    def encode_many(
        self, lo: np.ndarray, hi: np.ndarray, bitwidth: int, *, steps: tuple[int, int] | None = None
    ) -> EncodedRanges:
        lo, hi = sanitize_ranges(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
        qmax = 2**bitwidth - 1
        # float32 arithmetic, as the runtimes (and onnxruntime's quantizer) compute it
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = ((hi - lo).astype(np.float32) / np.float32(qmax)).astype(np.float64)
        scale = np.where(hi > lo, scale, DEGENERATE_SCALE)
        offset = np.clip(-np.round(-lo / scale), -qmax, 0).astype(np.int64)
        n = scale.size
        return EncodedRanges(scale, offset, np.zeros(n, dtype=np.int64), np.full(n, qmax))


@hookimpl
def register_quantization_schemas() -> list[QuantizationSchema]:
    return [Asymmetric()]
