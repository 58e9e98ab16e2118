"""The HTA backend and the quantization it supports."""

from opendlc.hookspecs import hookimpl
from opendlc.targets import Backend


@hookimpl
def register_backends() -> list[Backend]:
    return [
        Backend(
            name="HTA",
            description="Hexagon Tensor Accelerator: fixed-point 8-bit weights, 8/16-bit activations",
            weight_bitwidths=(8,),
            activation_bitwidths=(8, 16),
            bias_bitwidths=(8, 32),
            per_channel=False,
            per_row=False,
            float16=False,
        )
    ]
