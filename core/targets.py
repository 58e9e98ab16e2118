"""What plugins register about hardware: HTP architectures, SoCs and backends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class HtpArch:
    """A Hexagon tensor processor generation, e.g. ``v75``."""

    name: str
    dsp_arch: int  # the number QNN's ``htp_arch`` option takes
    description: str = ""


@dataclass(frozen=True)
class Soc:
    """A Snapdragon SoC as QNN knows it."""

    name: str  # lower-case ASIC identifier, e.g. "sm8650"
    soc_model: int  # QNN soc_model id
    htp_arch: str  # name of an HtpArch, e.g. "v75"
    vtcm_mb: int  # the SoC's maximum VTCM size
    description: str = ""


@dataclass
class Backend:
    """A runtime a model can target, and the quantization it supports.

    Subclass and override :meth:`constrain_encodings` to apply the operator constraints the runtime
    needs (fixed output encodings, encodings shared across data-movement ops; :meth:`constrain_parameter`
    for one weight, if that can be quicker), and :meth:`match_qdq_model` where the runtime's arithmetic
    differs from the QDQ model's on a CPU.
    """

    name: str  # upper-case, e.g. "HTP"
    description: str
    weight_bitwidths: tuple[int, ...]
    activation_bitwidths: tuple[int, ...]
    bias_bitwidths: tuple[int, ...]
    per_channel: bool
    per_row: bool
    float16: bool
    # (weight bitwidth, activation bitwidth) pairs this runtime cannot run, with the reason.
    unsupported_mixes: dict[tuple[int, int], str] = field(default_factory=dict)

    def constrain_encodings(self, model: onnx.ModelProto, encodings: Any) -> Any:
        """Return ``encodings`` adjusted to what this runtime needs; the default changes nothing."""
        return encodings

    def constrain_parameter(self, model: onnx.ModelProto, encodings: Any, name: str) -> None:
        """Adjust, in place, parameter ``name``'s encoding in ``encodings`` (which holds the final
        activation encodings) to what this runtime needs, as :meth:`constrain_encodings` would.

        Algorithms that try many encodings of one weight (seq_mse) call this once per candidate; the
        default runs :meth:`constrain_encodings` on the whole set, so a backend overrides it only to be
        quicker, applying just the constraints that concern one parameter.
        """
        self.constrain_encodings(model, encodings)

    def match_qdq_model(self, model: onnx.ModelProto, encodings: Any) -> None:
        """Rewrite ``model`` in place so that onnxruntime's CPU computes what this runtime computes.

        ``model`` is the QDQ model (:func:`opendlc.quant.export.to_qdq_model`) of a container quantized
        for this runtime, with the container's ``encodings``; the CPU simulation of the quantized model
        then agrees with the runtime where their arithmetic differs (a weight held in another integer
        type, an operand converted to fewer bits).  The default changes nothing.
        """

    def check_bitwidths(self, weights: int, activations: int, bias: int) -> str | None:
        """A sentence saying why this combination is not supported here, or None."""
        if weights not in self.weight_bitwidths:
            return f"{self.name} does not support {weights}-bit weights (supported: {self.weight_bitwidths})"
        if activations not in self.activation_bitwidths:
            return (
                f"{self.name} does not support {activations}-bit activations "
                f"(supported: {self.activation_bitwidths})"
            )
        if bias not in self.bias_bitwidths:
            return f"{self.name} does not support {bias}-bit biases (supported: {self.bias_bitwidths})"
        return self.unsupported_mixes.get((weights, activations))
