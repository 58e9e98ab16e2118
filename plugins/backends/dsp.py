"""The DSP backend and the quantization it supports."""

from opendlc.hookspecs import hookimpl
from opendlc.targets import Backend


@hookimpl
def register_backends() -> list[Backend]:
    return [
        Backend(
            name="DSP",
            description="Hexagon DSP runtime (HVX): fixed-point 8-bit",
            weight_bitwidths=(8,),
            activation_bitwidths=(8, 16),
            bias_bitwidths=(8, 32),
            per_channel=True,
            per_row=False,
            float16=False,
            unsupported_mixes={
                (8, 16): "8-bit weights with 16-bit activations are only supported by HTA on the DSP runtime"
            },
        )
    ]
