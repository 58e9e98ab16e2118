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
_ARITHMETIC = ("Add", "Sub", "Mul", "Div")  # element-wise ops whose constants follow the activations


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
    return _encode_chosen(stats, lo, hi, schema, bitwidth, steps)


def _encode_chosen(
    stats: TensorStats,
    lo: float,
    hi: float,
    schema: QuantizationSchema,
    bitwidth: int,
    steps: tuple[int, int] | None,
) -> Encoding:
    if not (np.isfinite(lo) and np.isfinite(hi)):  # a method must never produce NaN encodings
        lo, hi = (stats.min, stats.max) if not stats.empty else (0.0, 0.0)
    return schema.encode(float(lo), float(hi), bitwidth, steps=steps if schema.symmetric else None)


def activation_encodings(stats: dict[str, TensorStats], q: Quantizers) -> dict[str, TensorEncoding]:
    for name, s in stats.items():
        _warn_degenerate(name, s)
    # all ranges at once: searching methods score every tensor's candidates together (same ranges as
    # encode_range per tensor)
    bw = q.options.act_bitwidth
    values = list(stats.values())
    ranges = q.act_method.choose_ranges(values, bitwidth=bw, schema=q.act_schema, options=q.calibration)
    out = {}
    for (name, s), (lo, hi) in zip(stats.items(), ranges, strict=True):
        enc = _encode_chosen(s, lo, hi, q.act_schema, bw, None)
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
    # constant operands of element-wise ops: 4 bits would wreck them, so at least 8; and for arithmetic
    # ones as many as the activations, since HTP runs a Mul/Add of a 16-bit activation and an 8-bit
    # constant in float16, outside a quantized group (a small tensor: the extra bits cost nothing).
    # Not LayerNormalization's scale: HTP refuses a 16-bit one.
    bw = max(8, q.options.weights_bitwidth)
    if use.op_type in _ARITHMETIC:
        bw = max(bw, q.options.act_bitwidth)
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
    """The bias encoding, and the weight encoding (widened where a bias would not fit int32)."""
    o = q.options
    per_channel = weight is not None and weight.per_channel
    if (
        per_channel
        and use.op_type in PER_ROW_OPS
        and not o.enable_per_row_quantized_bias
        and not (o.use_per_channel_quantization and use.op_type in PER_CHANNEL_OPS)
    ):
        per_channel = False  # per-row weights keep a per-tensor bias unless asked
    integer_op = (
        act is not None
        and act.dtype == "int"
        and len(act.encodings) == 1
        and weight is not None
        and weight.dtype == "int"
    )
    if not integer_op or o.bias_bitwidth != 32:
        bw, m, sch = o.bias_bitwidth, q.param_method, q.param_schema
        if per_channel and o.enable_per_row_quantized_bias and use.op_type in PER_ROW_OPS:
            encs = [encode_range(_value_stats(v, m), m, sch, bw, q.calibration) for v in values.reshape(-1)]
            own = TensorEncoding(use.name, "param", encs, axis=0, source="calibration")
        else:
            own = TensorEncoding(use.name, "param", [own_bias_encoding(values, q)], source="calibration")
        if integer_op:  # HTP still adds this bias as int32 at input x weight scale (see below)
            assert act is not None and weight is not None
            weight = _fit_int32_bias(use, _dequantized(values, own), act.encodings[0].scale, weight)
        return own, weight
    assert act is not None and weight is not None
    weight = _fit_int32_bias(use, values, act.encodings[0].scale, weight)
    qmax = 2 ** (o.bias_bitwidth - 1) - 1
    s_in = act.encodings[0].scale
    w_encs = weight.encodings
    scales = [s_in * we.scale for we in w_encs] if per_channel else [s_in * w_encs[0].scale]
    if not per_channel and len(w_encs) > 1:
        # one bias scale for several weight scales: cover the largest
        scales = [s_in * max(we.scale for we in w_encs)]
    encs = [Encoding(32, float(s), 0, -(qmax + 1) * float(s), qmax * float(s), True, True) for s in scales]
    return TensorEncoding(
        use.name, "param", encs, axis=0 if len(encs) > 1 else None, source="calibration"
    ), weight


def own_bias_encoding(values: np.ndarray, q: Quantizers) -> Encoding:
    """The per-tensor encoding a bias gets from its own values when biases are not 32-bit integers at
    input x weight scale (``--bias_bitwidth 8``, the SDK's default): its range by the parameter
    calibration method, turned into scale/offset by the parameter schema."""
    m = q.param_method
    return encode_range(_value_stats(values, m), m, q.param_schema, q.options.bias_bitwidth, q.calibration)


def _dequantized(values: np.ndarray, t: TensorEncoding) -> np.ndarray:
    """``values`` after quantize-dequantize with ``t`` (one encoding, or one per element)."""
    flat = values.reshape(-1).astype(np.float64)
    if len(t.encodings) == flat.size and flat.size > 1:
        return np.array([e.quantize_dequantize(v) for e, v in zip(t.encodings, flat, strict=True)])
    return np.asarray(t.encodings[0].quantize_dequantize(flat))


# Relative headroom so float32 rounding of the stored scales cannot push a bias past int32.
_INT32_HEADROOM = 1.0 + 1e-5


def _fit_int32_bias(use: ParamUse, bias: np.ndarray, s_in: float, weight: TensorEncoding) -> TensorEncoding:
    """``weight`` with its scale widened wherever ``bias`` would not fit int32 at input x weight scale.

    HTP (and onnxruntime's integer Conv/Gemm kernels) add a bias as int32 in units of
    input scale x weight scale, whatever scale the bias was given: a bias beyond that range is clipped
    (a channel whose weights are all about zero gets a tiny weight scale, and loses its bias).  Widening
    the weight scale of those channels -- as ``--adjust_bias_encoding`` asks and onnxruntime's QDQ
    quantizer does by default -- keeps the bias; the CPU simulation then computes what HTP does.
    """
    qmax = 2**31 - 1
    magnitudes = np.abs(bias.reshape(-1)).astype(np.float64)
    encs = list(weight.encodings)
    if len(encs) == magnitudes.size:
        needs = magnitudes * _INT32_HEADROOM / (qmax * s_in)
    else:  # one weight scale (or a bias per tensor): the largest bias must fit every scale
        needs = np.full(len(encs), magnitudes.max(initial=0.0) * _INT32_HEADROOM / (qmax * s_in))
    widened = 0
    for c, (need, we) in enumerate(zip(needs, encs, strict=True)):
        if need > we.scale:
            s = float(need)  # same offset: the same integers cover a proportionally wider range
            lo, hi = s * (we.qmin + we.offset), s * (we.qmax + we.offset)
            encs[c] = dataclasses.replace(we, scale=s, min=lo, max=hi)
            widened += 1
    if not widened:
        return weight
    log.info(
        "%s: widened %d weight scale(s) of '%s' so bias '%s' fits int32 at input x weight scale",
        use.op_type,
        widened,
        weight.name,
        use.name,
    )
    return dataclasses.replace(weight, encodings=encs)


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
