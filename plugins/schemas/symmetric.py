"""The symmetric schema: signed integers, offset 0, range [-absmax, absmax]."""

from __future__ import annotations

from opendlc.hookspecs import hookimpl
from opendlc.schemas import DEGENERATE_SCALE, Encoding, QuantizationSchema, sanitize_range


def symmetric_encoding(lo: float, hi: float, bitwidth: int, steps: tuple[int, int] | None) -> Encoding:
    lo, hi = sanitize_range(lo, hi)
    absmax = max(-lo, hi)
    if steps is None:
        qmin, qmax = -(2 ** (bitwidth - 1)), 2 ** (bitwidth - 1) - 1
        scale = absmax / qmax  # keeps -absmax representable too (q = -qmax)
    else:
        qmin, qmax = steps
        scale = 2 * absmax / (qmax - qmin)  # "scale = (max - min) / number of quantization steps"
    scale = scale if scale > 0 else DEGENERATE_SCALE
    return Encoding(bitwidth, scale, 0, qmin * scale, qmax * scale, True, True)


class Symmetric(QuantizationSchema):
    name = "symmetric"
    description = "signed integers, offset 0; scale = max(|min|, |max|) / (2^(b-1) - 1)"
    symmetric = True

    def encode(
        self, lo: float, hi: float, bitwidth: int, *, steps: tuple[int, int] | None = None
    ) -> Encoding:
        return symmetric_encoding(lo, hi, bitwidth, steps)


@hookimpl
def register_quantization_schemas() -> list[QuantizationSchema]:
    return [Symmetric()]
