"""The CPU backend and the quantization it supports."""

from opendlc.hookspecs import hookimpl
from opendlc.targets import Backend


@hookimpl
def register_backends() -> list[Backend]:
    return [
        Backend(
            name="CPU",
            description="Qualcomm CPU runtime: runs float, quantized models are dequantized on load",
            weight_bitwidths=(4, 8, 16),
            activation_bitwidths=(8, 16),
            bias_bitwidths=(8, 32),
            per_channel=True,
            per_row=True,
            float16=False,
        )
    ]
