"""Variants of a quantized model's encodings: only some tensors quantized, or some promoted to more bits.

Every variant is an :class:`~opendlc.encodings.EncodingSet` exported with
:func:`opendlc.quant.export.to_qdq_model`, so what is measured is what the engine would run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import onnx

from opendlc.container import Container
from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.errors import UsageError
from opendlc.observers import TensorStats
from opendlc.plugin_manager import get_plugin_manager
from opendlc.quant.encode import Quantizers, bias_encodings, encode_range, weight_encoding
from opendlc.quant.options import QuantizerOptions
from opendlc.quant.plan import QuantPlan, make_plan

log = logging.getLogger("opendlc.analysis")

ItemKind = Literal["activation", "weights"]


@dataclass(frozen=True)
class Item:
    """What a sensitivity run quantizes alone, and what the verdict may promote: one activation, or
    the weights (with their bias) of one layer."""

    kind: ItemKind
    tensor: str  # the activation, or the weight
    layer: str  # the node that produces the activation / uses the weight
    op_type: str
    params: tuple[str, ...] = ()  # weights: the weight and its bias


@contextlib.contextmanager
def quiet_engine() -> Iterator[None]:
    """Silence the engine's warnings while variants are computed: quantizing showed them once already,
    and a sensitivity analysis computes dozens of variants."""
    loggers = [logging.getLogger(n) for n in ("opendlc.quant", "opendlc.backend")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def options_of(container: Container, options: QuantizerOptions | None = None) -> QuantizerOptions:
    """The options the container was quantized with (recorded in its encodings), unless given."""
    if options is not None:
        return options
    recorded = container.encodings.meta.get("quantizer") if container.encodings else None
    if not recorded:
        log.warning("the container records no quantizer options; assuming the defaults")
        return QuantizerOptions()
    fields = {f.name for f in dataclasses.fields(QuantizerOptions)}
    values = {k: v for k, v in recorded.items() if k in fields}
    if values.get("restrict_quantization_steps") is not None:
        values["restrict_quantization_steps"] = tuple(values["restrict_quantization_steps"])
    return QuantizerOptions(**values)


def quantizers(options: QuantizerOptions) -> Quantizers:
    return Quantizers.resolve(options, get_plugin_manager())


def parameter_plan(model: onnx.ModelProto) -> QuantPlan:
    """The model's quantized constants and how they are used (activations are not needed here)."""
    return make_plan(model, set())


def copy_set(encodings: EncodingSet) -> EncodingSet:
    return EncodingSet(dict(encodings.tensors), copy.deepcopy(encodings.meta))


def keep_only(encodings: EncodingSet, names: Iterable[str]) -> EncodingSet:
    """A copy in which only ``names`` keep their encodings; every other tensor runs in float32."""
    keep = set(names)
    out = EncodingSet(meta=copy.deepcopy(encodings.meta))
    for name, t in encodings.tensors.items():
        out.add(t if name in keep else TensorEncoding(name, t.kind, [], None, "float", 32, "analysis"))
    return out


def promotion_target(kind: ItemKind, options: QuantizerOptions) -> str:
    """What an item is promoted to: 16-bit integers, or float when it is at 16 bits already."""
    bits = options.act_bitwidth if kind == "activation" else options.weights_bitwidth
    if bits < 16:
        return "int16"
    backend = get_plugin_manager().backends.get(options.target_backend)
    return "float16" if backend.float16 else "float32"


def _promoted_encoding(
    item: Item, target: str, stats: Mapping[str, TensorStats], plan: QuantPlan, q: Quantizers
) -> TensorEncoding:
    if target.startswith("float"):
        return TensorEncoding(item.tensor, _kind(item), [], None, "float", int(target[5:]), "analysis")
    if item.kind == "activation":
        if item.tensor not in stats:
            raise UsageError(f"no statistics of activation '{item.tensor}' to encode it at 16 bits")
        enc = encode_range(stats[item.tensor], q.act_method, q.act_schema, 16, q.calibration)
        return TensorEncoding(item.tensor, "activation", [enc], source="analysis")
    q16 = dataclasses.replace(q, options=dataclasses.replace(q.options, weights_bitwidth=16))
    t = weight_encoding(plan.params[item.tensor], plan.values[item.tensor], q16)
    return dataclasses.replace(t, source="analysis")


def _kind(item: Item) -> str:
    return "activation" if item.kind == "activation" else "param"


def promote(
    model: onnx.ModelProto,
    encodings: EncodingSet,
    items: Iterable[Item],
    stats: Mapping[str, TensorStats],
    options: QuantizerOptions,
) -> tuple[EncodingSet, EncodingSet]:
    """(the overrides that promote ``items``, the encodings the quantizer then produces).

    The promoted encodings go through the backend's constraints again (so a promoted tensor's encoding
    spreads across the data-movement ops and Concats that share it), biases are derived again from
    the final input and weight encodings, and the overrides are every non-bias tensor whose encoding
    changed -- what the quantizer applies after its own constraints, before deriving biases.
    """
    with quiet_engine():
        return _promote(model, encodings, items, stats, options)


def _promote(
    model: onnx.ModelProto,
    encodings: EncodingSet,
    items: Iterable[Item],
    stats: Mapping[str, TensorStats],
    options: QuantizerOptions,
) -> tuple[EncodingSet, EncodingSet]:
    q = quantizers(options)
    plan = parameter_plan(model)
    mixed = copy_set(encodings)
    for item in items:
        target = promotion_target(item.kind, options)
        mixed.add(_promoted_encoding(item, target, stats, plan, q))
    get_plugin_manager().backends.get(options.target_backend).constrain_encodings(model, mixed)
    overrides = EncodingSet(meta={"quantizer": options.to_dict(), "producer": "opendlc analyze"})
    biases = {n for n, u in plan.params.items() if u.role == "bias"}
    for name, t in mixed.tensors.items():
        if name in biases:
            continue
        old = encodings.tensors.get(name)
        if old is None or _differs(old, t):
            overrides.add(dataclasses.replace(t, source="overrides"))
    return overrides, apply_overrides(model, encodings, overrides, options, plan=plan)


def _differs(a: TensorEncoding, b: TensorEncoding) -> bool:
    return (a.dtype, a.float_bitwidth, a.encodings, a.axis) != (
        b.dtype,
        b.float_bitwidth,
        b.encodings,
        b.axis,
    )


def apply_overrides(
    model: onnx.ModelProto,
    encodings: EncodingSet,
    overrides: EncodingSet,
    options: QuantizerOptions,
    *,
    plan: QuantPlan | None = None,
) -> EncodingSet:
    """``encodings`` as the quantizer would leave them with ``overrides`` stored: the overrides replace
    the calibrated encodings, then biases it derived (not those stored as overrides) are derived again
    from the final input and weight encodings."""
    plan = plan or parameter_plan(model)
    out = copy_set(encodings)
    for t in overrides.tensors.values():
        out.add(dataclasses.replace(t, source="overrides"))
    for name, use in plan.params.items():
        if use.role == "bias" and name in out and out[name].source == "calibration":
            del out.tensors[name]
    bias_encodings(plan, quantizers(options), out)
    return out
