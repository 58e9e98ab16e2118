"""From statistics and values to encodings: calibration method -> range, schema -> scale/offset."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from opendlc.calibration import CalibrationMethod, CalibrationOptions
from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.observers import BINS, TensorStats
from opendlc.plugin_manager import PluginManager
from opendlc.quant.options import QuantizerOptions
from opendlc.quant.plan import ParamUse, QuantPlan
from opendlc.schemas import Encoding, QuantizationSchema

log = logging.getLogger("opendlc.quant.encode")

PER_CHANNEL_OPS = ("Conv", "ConvTranspose", "Gemm")
PER_ROW_OPS = ("MatMul", "Gemm")


@dataclass
class Quantizers:
    """The plugins and options that turn statistics into encodings."""

    act_method: CalibrationMethod
    param_method: CalibrationMethod
    act_schema: QuantizationSchema
    param_schema: QuantizationSchema
    calibration: CalibrationOptions
    options: QuantizerOptions

    @classmethod
    def resolve(cls, options: QuantizerOptions, pm: PluginManager) -> Quantizers:
        return cls(
            act_method=pm.calibration_methods.get(options.act_quantizer_calibration),
            param_method=pm.calibration_methods.get(options.param_quantizer_calibration),
            act_schema=pm.schemas.get(options.act_quantizer_schema),
            param_schema=pm.schemas.get(options.param_quantizer_schema),
            calibration=CalibrationOptions(percentile=options.percentile_calibration_value),
            options=options,
        )


def _warn_degenerate(name: str, stats: TensorStats) -> None:
    if stats.empty:
        log.warning("tensor '%s': no finite values observed; its encoding covers only 0", name)
    elif stats.min == stats.max:
        log.warning("tensor '%s' is constant (%g) over the calibration data", name, stats.min)


def encode_range(
    stats: TensorStats,
    method: CalibrationMethod,
    schema: QuantizationSchema,
    bitwidth: int,
    calibration: CalibrationOptions,
    steps: tuple[int, int] | None = None,
) -> Encoding:
    if steps is not None and schema.symmetric:  # searching methods score the restricted grid
        calibration = dataclasses.replace(calibration, steps=steps)
    lo, hi = method.choose_range(stats, bitwidth=bitwidth, schema=schema, options=calibration)
    if not (np.isfinite(lo) and np.isfinite(hi)):  # a method must never produce NaN encodings
        lo, hi = (stats.min, stats.max) if not stats.empty else (0.0, 0.0)
    return schema.encode(float(lo), float(hi), bitwidth, steps=steps if schema.symmetric else None)


def activation_encodings(stats: dict[str, TensorStats], q: Quantizers) -> dict[str, TensorEncoding]:
    out = {}
    for name, s in stats.items():
        _warn_degenerate(name, s)
        enc = encode_range(s, q.act_method, q.act_schema, q.options.act_bitwidth, q.calibration)
        out[name] = TensorEncoding(name, "activation", [enc], source="calibration")
    return out


def _value_stats(values: np.ndarray, method: CalibrationMethod) -> TensorStats:
    return TensorStats.of(values, bins=BINS if method.needs_histogram else 0)


def _channels(values: np.ndarray, axis: int) -> list[np.ndarray]:
    moved = np.moveaxis(values, axis, 0)
    return [moved[i] for i in range(moved.shape[0])]


def weight_encoding(use: ParamUse, values: np.ndarray, q: Quantizers) -> TensorEncoding:
    o = q.options
    axis = use.channel_axis
    if axis is not None and axis < 0:
        axis += values.ndim
    per_axis = (
        axis is not None
        and values.ndim >= 2
        and (
            (o.use_per_channel_quantization and use.op_type in PER_CHANNEL_OPS)
            or (o.use_per_row_quantization and use.op_type in PER_ROW_OPS)
        )
    )
    steps = o.restrict_quantization_steps
    bw = o.weights_bitwidth
    if not per_axis:
        enc = encode_range(
            _value_stats(values, q.param_method), q.param_method, q.param_schema, bw, q.calibration, steps
        )
        return TensorEncoding(use.name, "param", [enc], source="calibration")
    encs = [
        encode_range(
            _value_stats(c, q.param_method), q.param_method, q.param_schema, bw, q.calibration, steps
        )
        for c in _channels(values, axis)
    ]
    return TensorEncoding(use.name, "param", encs, axis=axis, source="calibration")


def other_param_encoding(use: ParamUse, values: np.ndarray, q: Quantizers) -> TensorEncoding:
    # constant operands of element-wise ops: 4 bits would wreck them, so at least 8
    bw = max(8, q.options.weights_bitwidth)
    enc = encode_range(
        _value_stats(values, q.param_method),
        q.param_method,
        q.param_schema,
        bw,
        q.calibration,
        q.options.restrict_quantization_steps,
    )
    return TensorEncoding(use.name, "param", [enc], source="calibration")


def bias_encoding(
    use: ParamUse,
    values: np.ndarray,
    q: Quantizers,
    act: TensorEncoding | None,
    weight: TensorEncoding | None,
) -> tuple[TensorEncoding, TensorEncoding | None]:
    """The bias encoding, and the weight encoding (changed only by ``adjust_bias_encoding``)."""
    o = q.options
    per_channel = weight is not None and weight.per_channel
    if (
        per_channel
        and use.op_type in PER_ROW_OPS
        and not o.enable_per_row_quantized_bias
        and not (o.use_per_channel_quantization and use.op_type in PER_CHANNEL_OPS)
    ):
        per_channel = False  # per-row weights keep a per-tensor bias unless asked
    derived = (
        o.bias_bitwidth == 32
        and act is not None
        and act.dtype == "int"
        and len(act.encodings) == 1
        and weight is not None
        and weight.dtype == "int"
    )
    if not derived:
        bw, m, sch = o.bias_bitwidth, q.param_method, q.param_schema
        if per_channel and o.enable_per_row_quantized_bias and use.op_type in PER_ROW_OPS:
            encs = [encode_range(_value_stats(v, m), m, sch, bw, q.calibration) for v in values.reshape(-1)]
            return TensorEncoding(use.name, "param", encs, axis=0, source="calibration"), weight
        enc = encode_range(_value_stats(values, m), m, sch, bw, q.calibration)
        return TensorEncoding(use.name, "param", [enc], source="calibration"), weight
    bw = o.bias_bitwidth
    qmax = 2 ** (bw - 1) - 1
    s_in = act.encodings[0].scale
    w_encs = list(weight.encodings)
    flat = values.reshape(-1)
    if o.adjust_bias_encoding and weight.per_channel and len(w_encs) == flat.size:
        for c, (b, we) in enumerate(zip(flat, w_encs, strict=True)):
            needed = abs(float(b)) / (qmax * s_in)
            if needed > we.scale:  # widen the weight's scale so the bias fits its encoding
                ratio = needed / we.scale
                w_encs[c] = Encoding(
                    we.bitwidth, needed, we.offset, we.min * ratio, we.max * ratio, we.is_symmetric, we.signed
                )
        if w_encs != list(weight.encodings):
            log.info("adjusted %s: widened weight scales of '%s' so its bias fits", use.name, weight.name)
            weight = TensorEncoding(
                weight.name, weight.kind, w_encs, weight.axis, weight.dtype, None, weight.source
            )
    scales = [s_in * we.scale for we in w_encs] if per_channel else [s_in * w_encs[0].scale]
    if not per_channel and len(w_encs) > 1:
        # one bias scale for several weight scales: cover the largest
        scales = [s_in * max(we.scale for we in w_encs)]
    # A bias beyond int32 at (input scale x weight scale) would be clipped: give it the scale it needs.
    magnitudes = np.abs(flat) if len(scales) == flat.size else np.array([np.abs(flat).max(initial=0.0)])
    needed = magnitudes.astype(np.float64) / qmax
    if np.any(needed > np.asarray(scales)):
        scales = list(np.maximum(np.asarray(scales), needed))
        log.warning(
            "bias '%s' does not fit %d bits at input scale x weight scale; it gets a wider scale of its own"
            "%s",
            use.name,
            bw,
            ""
            if o.adjust_bias_encoding
            else " (--adjust_bias_encoding widens the per-channel weight scales instead)",
        )
    encs = [Encoding(bw, float(s), 0, -(qmax + 1) * float(s), qmax * float(s), True, True) for s in scales]
    return TensorEncoding(
        use.name, "param", encs, axis=0 if len(encs) > 1 else None, source="calibration"
    ), weight


def parameter_encodings(plan: QuantPlan, q: Quantizers) -> dict[str, TensorEncoding]:
    """Encodings of weights and other constants, from their values (biases come later: they depend on
    the final input and weight encodings)."""
    out: dict[str, TensorEncoding] = {}
    for name, use in plan.params.items():
        if use.role == "weight":
            out[name] = weight_encoding(use, plan.values[name], q)
        elif use.role == "other":
            out[name] = other_param_encoding(use, plan.values[name], q)
    return out


def bias_encodings(plan: QuantPlan, q: Quantizers, encodings: EncodingSet) -> None:
    """Add bias encodings to ``encodings`` (32-bit biases: input scale x weight scale)."""
    for use in plan.params.values():
        if use.role != "bias" or use.name in encodings:
            continue
        weight = encodings[use.weight] if use.weight in encodings else None
        act = encodings[use.input_activation] if use.input_activation in encodings else None
        bias, new_weight = bias_encoding(use, plan.values[use.name], q, act, weight)
        encodings.add(bias)
        if new_weight is not None and new_weight is not weight:
            encodings.add(new_weight)
