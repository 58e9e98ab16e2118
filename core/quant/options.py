"""The quantizer's options, named as qairt-quantizer names them.

Every front end (``opendlc quantize``, ``qairt-quantizer``, ``snpe-dlc-quant``, ``snpe-dlc-quantize``,
a YAML ``--config``) builds one :class:`QuantizerOptions` and calls :func:`opendlc.quant.api.quantize`.
Legacy SNPE option names are mapped onto these by the front ends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from opendlc.errors import UsageError

WEIGHT_BITWIDTHS = (4, 8, 16)
ACT_BITWIDTHS = (8, 16)
BIAS_BITWIDTHS = (8, 32)
FLOAT_BITWIDTHS = (16, 32)


@dataclass
class QuantizerOptions:
    # bitwidths
    weights_bitwidth: int = 8
    act_bitwidth: int = 8
    bias_bitwidth: int = 8
    float_bitwidth: int = 32
    float_bias_bitwidth: int = 0  # 0: not given
    # how ranges are chosen (calibration method plugins) and encoded (schema plugins)
    act_quantizer_calibration: str = "min-max"
    param_quantizer_calibration: str = "min-max"
    act_quantizer_schema: str = "asymmetric"
    param_quantizer_schema: str = "asymmetric"
    percentile_calibration_value: float = 99.99
    # parameters
    use_per_channel_quantization: bool = False
    use_per_row_quantization: bool = False
    enable_per_row_quantized_bias: bool = False
    restrict_quantization_steps: tuple[int, int] | None = None
    keep_weights_quantized: bool = False
    adjust_bias_encoding: bool = False
    # overrides and float fallback
    ignore_quantization_overrides: bool = False
    enable_float_fallback: bool = False
    # graph
    apply_algorithms: list[str] = field(default_factory=list)
    preserve_io_datatype: list[str] | None = None  # None: not given; []: every input and output
    # target
    target_backend: str = "HTP"
    target_soc_model: str | None = None
    # user-defined ops: registration libraries / op package libs
    udo_package_path: list[str] = field(default_factory=list)
    op_package_lib: list[str] = field(default_factory=list)
    use_aimet_quantizer: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.restrict_quantization_steps is not None:
            d["restrict_quantization_steps"] = list(self.restrict_quantization_steps)
        return d

    def validate(self) -> None:
        """Check values that do not need the plugins (names are checked against the registries later)."""
        checks = [
            ("weights_bitwidth", self.weights_bitwidth, WEIGHT_BITWIDTHS),
            ("act_bitwidth", self.act_bitwidth, ACT_BITWIDTHS),
            ("bias_bitwidth", self.bias_bitwidth, BIAS_BITWIDTHS),
            ("float_bitwidth", self.float_bitwidth, FLOAT_BITWIDTHS),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise UsageError(f"--{name} {value} is not supported (choose {', '.join(map(str, allowed))})")
        if self.float_bias_bitwidth not in (0, 16, 32):
            raise UsageError(
                f"--float_bias_bitwidth {self.float_bias_bitwidth} is not supported (choose 16, 32)"
            )
        if not 90 <= self.percentile_calibration_value <= 100:
            raise UsageError(
                f"--percentile_calibration_value {self.percentile_calibration_value} "
                "must lie within 90 and 100"
            )
        if self.restrict_quantization_steps is not None:
            lo, hi = self.restrict_quantization_steps
            if not lo < 0 < hi:
                raise UsageError(f"--restrict_quantization_steps: need MIN < 0 < MAX, got {lo}, {hi}")
        if self.enable_float_fallback and self.ignore_quantization_overrides:
            raise UsageError("--enable_float_fallback cannot be used with --ignore_quantization_overrides")
