"""The asymmetric schema: the full integer range spans [min, max] (widened to include zero)."""

from __future__ import annotations

import numpy as np

from opendlc.hookspecs import hookimpl
from opendlc.schemas import DEGENERATE_SCALE, Encoding, QuantizationSchema, sanitize_range


class Asymmetric(QuantizationSchema):
    name = "asymmetric"
    description = "unsigned integers over [min, max] including zero; offset = round(min / scale)"
    symmetric = False

    def encode(
        self, lo: float, hi: float, bitwidth: int, *, steps: tuple[int, int] | None = None
    ) -> Encoding:
        lo, hi = sanitize_range(lo, hi)
        qmax = 2**bitwidth - 1
        # float32 arithmetic, as the runtimes (and onnxruntime's quantizer) compute it
        scale = float(np.float32(hi - lo) / np.float32(qmax)) if hi > lo else DEGENERATE_SCALE
        offset = int(np.clip(-np.round(-lo / scale), -qmax, 0))
        return Encoding(bitwidth, scale, offset, offset * scale, (offset + qmax) * scale, False, False)


@hookimpl
def register_quantization_schemas() -> list[QuantizationSchema]:
    return [Asymmetric()]
