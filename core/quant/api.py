"""The public quantization API (see docs/quantization.md).

``quantize`` runs the pipeline: normalise the float graph -> algorithms before calibration -> plan which
tensors carry encodings -> stream the calibration samples through observers -> calibration method chooses
ranges -> schema makes scale/offset -> backend constraints -> stored overrides -> algorithms after
calibration.  Each stage is a public function of its own module, so it can be used alone.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Mapping, Sized
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from opendlc.algorithms import RETAINED_SAMPLES, CalibrationContext, Phase
from opendlc.container import Container
from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.errors import UsageError
from opendlc.plugin_manager import get_plugin_manager
from opendlc.quant.calibrate import collect_statistics, float_activation_names, with_outputs
from opendlc.quant.encode import Quantizers, activation_encodings, bias_encodings, parameter_encodings
from opendlc.quant.options import QuantizerOptions
from opendlc.quant.plan import QuantPlan, make_plan
from opendlc.quant.propagate import SAME_VALUES, propagate, same_values_outputs

log = logging.getLogger("opendlc.quant")


def normalize_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, set[str], list[str]]:
    """The graph as the backend runs it (constants folded, BN folded, activations fused)."""
    from opendlc.graph.normalize import normalize

    n = normalize(model)
    return n.model, set(n.no_encoding), list(n.report)


def check_target(options: QuantizerOptions) -> None:
    pm = get_plugin_manager()
    backend = pm.backends.get(options.target_backend)
    problem = backend.check_bitwidths(options.weights_bitwidth, options.act_bitwidth, options.bias_bitwidth)
    if problem:
        raise UsageError(problem)
    if options.use_per_channel_quantization and not backend.per_channel:
        raise UsageError(f"{backend.name} does not support per-channel quantization")
    if options.use_per_row_quantization and not backend.per_row:
        raise UsageError(f"{backend.name} does not support per-row quantization")
    if options.target_soc_model:
        pm.socs.get(options.target_soc_model)


def quantize(
    container: Container,
    samples: Iterable[Mapping[str, np.ndarray]] | None,
    options: QuantizerOptions,
    *,
    extra_outputs: list[str] | None = None,
    progress: bool = True,
) -> Container:
    """Quantize ``container``'s float model; return a new container holding the encodings.

    ``samples`` yields one calibration input per item (input name -> array, in the model's shapes);
    it is consumed once, streaming.  ``None`` is allowed only with ``enable_float_fallback`` (encodings
    then come from the stored overrides).  ``extra_outputs`` names tensors the user asked to be graph
    outputs (the ``#``/``%`` lines of an input list).
    """
    options.validate()
    if samples is None and not options.enable_float_fallback:
        raise UsageError(
            "quantization needs calibration inputs (--input_list) unless --enable_float_fallback"
        )
    if samples is not None and options.enable_float_fallback:
        raise UsageError("--enable_float_fallback takes no --input_list: encodings come from the overrides")
    pm = get_plugin_manager()
    check_target(options)
    q = Quantizers.resolve(options, pm)
    algorithms = [pm.algorithms.get(name) for name in options.apply_algorithms]
    udo = [*options.udo_package_path, *options.op_package_lib]

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    model = with_outputs(container.model, extra_outputs) if extra_outputs else container.model
    model, no_encoding, report = normalize_model(model)
    for line in report:
        log.log(15, "normalise: %s", line)
    context: dict[str, Any] = {"options": options, "report": report}
    if samples is not None and any(a.phase == Phase.BEFORE_CALIBRATION for a in algorithms):
        # a few inputs for data-aware choices on the float graph (cle: how far to move a bias where
        # any amount is exact); the stream itself stays whole for calibration
        samples, context["samples"] = _peek(samples, RETAINED_SAMPLES)
    for alg in algorithms:
        if alg.phase == Phase.BEFORE_CALIBRATION:
            log.info("applying %s", alg.name)
            model = alg.apply(model, context)

    plan = make_plan(model, float_activation_names(model, udo_packages=udo), no_encoding)
    timings["prepare"] = time.perf_counter() - clock
    clock = time.perf_counter()
    overrides = None if options.ignore_quantization_overrides else container.overrides
    encodings = EncodingSet()
    n_samples = 0
    if samples is None:
        _float_fallback(model, plan, q, overrides or EncodingSet(), encodings)
    else:
        total = len(samples) if isinstance(samples, Sized) else None
        counted = _Counting(samples)
        rearranged = same_values_outputs(model, plan.activations)  # their input's statistics are theirs
        stats = collect_statistics(
            model,
            counted,
            [t for t in plan.activations if t not in rearranged],
            histograms=q.act_method.needs_histogram,
            total=total,
            udo_packages=udo,
            progress=progress,
        )
        n_samples = counted.count  # type: ignore[attr-defined]
        observed = time.perf_counter()
        for enc in activation_encodings(stats, q).values():
            encodings.add(enc)
        propagate(model, encodings, rearranged, SAME_VALUES, backward=False)
        timings["calibration"] = time.perf_counter() - clock  # observing + choosing activation ranges
        timings["calibration: observing"] = observed - clock
        timings["calibration: choosing ranges"] = timings["calibration"] - timings["calibration: observing"]
        clock = time.perf_counter()
        for enc in parameter_encodings(plan, q).values():
            encodings.add(enc)
        pm.backends.get(options.target_backend).constrain_encodings(model, encodings)
        if overrides is not None:
            _apply_overrides(encodings, overrides, plan)
        bias_encodings(plan, q, encodings)  # last: they follow the final input and weight scales

    timings["encodings"] = time.perf_counter() - clock
    clock = time.perf_counter()
    after = [a for a in algorithms if a.phase == Phase.AFTER_CALIBRATION]
    if after:
        ctx = CalibrationContext(options, encodings, counted.kept if samples is not None else [])
        for alg in after:
            log.info("applying %s", alg.name)
            model = alg.apply(model, ctx)
        report += ctx.report
        _refresh_biases(model, plan, q, encodings)
        timings["after-calibration algorithms"] = time.perf_counter() - clock

    encodings.meta = {
        "quantizer": options.to_dict(),
        "samples": n_samples,
        "normalization": report,
        "preserve_io_datatype": options.preserve_io_datatype,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    log.info(
        "%d activation and %d parameter encodings",
        len(encodings.of_kind("activation")),
        len(encodings.of_kind("param")),
    )
    return Container(
        model=model,
        encodings=encodings,
        overrides=container.overrides,
        meta={**container.meta, "quantized_from": str(container.path) if container.path else None},
    )


def _peek(
    samples: Iterable[Mapping[str, np.ndarray]], n: int
) -> tuple[Iterable[Mapping[str, np.ndarray]], list[Mapping[str, np.ndarray]]]:
    """The first ``n`` samples, and the samples still whole: a re-iterable set is read again from its
    start, a one-shot iterator gets what was taken chained back in front."""
    it = iter(samples)
    head = list(itertools.islice(it, n))
    return (samples if it is not samples else itertools.chain(head, it)), head


class _Counting:
    """Iterates samples while counting them and keeping the first few (for after-calibration
    algorithms; bounded, so memory does not grow with the data set)."""

    def __init__(self, it: Iterable[Mapping[str, np.ndarray]]) -> None:
        self._it, self.count = it, 0
        self.kept: list[Mapping[str, np.ndarray]] = []

    def __iter__(self):
        for s in self._it:
            self.count += 1
            if len(self.kept) < RETAINED_SAMPLES:
                self.kept.append(s)
            yield s


def _refresh_biases(model: onnx.ModelProto, plan: QuantPlan, q: Quantizers, encodings: EncodingSet) -> None:
    """Re-derive bias encodings after an algorithm changed bias values."""
    inits = {t.name: t for t in model.graph.initializer}
    for name, use in plan.params.items():
        if (
            use.role == "bias"
            and name in inits
            and encodings.tensors.get(name, None) is not None
            and encodings[name].source != "overrides"
        ):
            plan.values[name] = numpy_helper.to_array(inits[name]).astype(np.float32)
            del encodings.tensors[name]
    bias_encodings(plan, q, encodings)


def _apply_overrides(encodings: EncodingSet, overrides: EncodingSet, plan: QuantPlan) -> None:
    known = set(plan.activations) | set(plan.params)
    unknown = [n for n in overrides.tensors if n not in known]
    if unknown:
        log.warning(
            "%d override encodings name tensors the quantized graph does not have (ignored): %s",
            len(unknown),
            ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""),
        )
    for name, enc in overrides.tensors.items():
        if name in known:
            kind = "param" if name in plan.params else "activation"
            encodings.add(
                TensorEncoding(
                    name,
                    kind,
                    list(enc.encodings),
                    _override_axis(name, enc, plan),
                    enc.dtype,
                    enc.float_bitwidth,
                    "overrides",
                )
            )


def _override_axis(name: str, enc: TensorEncoding, plan: QuantPlan) -> int | None:
    """The channel axis of a per-channel parameter override.  AIMET files carry none (0.6.1) or assume
    0 (1.0.0); the op using the parameter decides it (ConvTranspose 1, MatMul's last axis)."""
    use = plan.params.get(name)
    if use is None or len(enc.encodings) < 2 or use.channel_axis is None:
        return enc.axis
    shape = plan.values[name].shape
    axis = use.channel_axis % len(shape)
    if shape[axis] != len(enc.encodings):
        raise UsageError(
            f"override of '{name}': {len(enc.encodings)} per-channel encodings, but its {use.op_type} "
            f"has {shape[axis]} channels (axis {axis} of {list(shape)})"
        )
    return axis


def _float_fallback(
    model: onnx.ModelProto, plan: QuantPlan, q: Quantizers, overrides: EncodingSet, encodings: EncodingSet
) -> None:
    """Encodings only from the overrides; gaps filled across data movement, the rest runs in float."""
    if not overrides.tensors:
        raise UsageError(
            "--enable_float_fallback needs stored encodings (convert with --quantization_overrides "
            "or a model with QDQ pairs)"
        )
    _apply_overrides(encodings, overrides, plan)
    added = propagate(model, encodings, plan.activations)
    log.info("float fallback: %d encodings propagated across data-movement ops", added)
    fb = q.options.float_bitwidth
    still = [a for a in plan.activations if a not in encodings]
    for name in still:
        encodings.add(TensorEncoding(name, "activation", [], None, "float", fb, "fallback"))
    if still:
        log.info("float fallback: %d activations run in float%d", len(still), fb)
    # parameters of ops whose output stays float stay float too, unless --keep_weights_quantized
    float_ops = {
        n.name
        for n in model.graph.node
        if n.output and n.output[0] in encodings and encodings[n.output[0]].dtype == "float"
    }
    computed = parameter_encodings(plan, q)
    fbb = q.options.float_bias_bitwidth or fb
    for name, use in plan.params.items():
        if name in encodings:
            continue
        if use.node in float_ops and not (q.options.keep_weights_quantized and use.role == "weight"):
            bits = fbb if use.role == "bias" else fb
            encodings.add(TensorEncoding(name, "param", [], None, "float", bits, "fallback"))
        elif name in computed:
            encodings.add(computed[name])
    bias_encodings(plan, q, encodings)
