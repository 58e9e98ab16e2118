"""The unsigned-symmetric schema: unsigned, offset 0 for non-negative data; symmetric otherwise."""

from __future__ import annotations

from opendlc.hookspecs import hookimpl
from opendlc.plugins.schemas.symmetric import symmetric_encoding
from opendlc.schemas import DEGENERATE_SCALE, Encoding, QuantizationSchema, sanitize_range


class UnsignedSymmetric(QuantizationSchema):
    name = "unsignedsymmetric"
    description = "non-negative data: unsigned integers over [0, max], offset 0; otherwise symmetric"
    symmetric = True

    def encode(
        self, lo: float, hi: float, bitwidth: int, *, steps: tuple[int, int] | None = None
    ) -> Encoding:
        lo, hi = sanitize_range(lo, hi)
        if lo < 0:
            return symmetric_encoding(lo, hi, bitwidth, steps)
        qmax = 2**bitwidth - 1
        scale = hi / qmax if hi > 0 else DEGENERATE_SCALE
        return Encoding(bitwidth, scale, 0, 0.0, qmax * scale, True, False)


@hookimpl
def register_quantization_schemas() -> list[QuantizationSchema]:
    return [UnsignedSymmetric()]
