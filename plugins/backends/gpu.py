"""The GPU backend and the quantization it supports."""

from opendlc.hookspecs import hookimpl
from opendlc.targets import Backend


@hookimpl
def register_backends() -> list[Backend]:
    return [
        Backend(
            name="GPU",
            description="Adreno GPU runtime: float16/float32 compute, weights may be stored quantized",
            weight_bitwidths=(8, 16),
            activation_bitwidths=(8, 16),
            bias_bitwidths=(8, 32),
            per_channel=False,
            per_row=False,
            float16=True,
        )
    ]
