"""``analyze``: which layers of a quantized model hurt its output, measured on samples.

Stages, each measured on the same samples:

1. statistics of every activation with histograms (``collect_statistics``);
2. per-layer SQNR: every activation of the QDQ simulation against FP32, and each activation's own
   encoding alone (one side-by-side onnxruntime graph, sums of squares only);
3. sensitivity, on a few samples and the layers that matter: the output's SQNR with only one
   activation, or only one layer's weights, quantized;
4. verdict: the most harmful items are promoted (16 bits, or float if at 16 bits already) one at a time
   while each raises the output SQNR measurably; the overrides that apply them are written as an AIMET
   file, read back, stored in a fresh container and the model re-quantized with them -- the gain stated
   is that re-quantization's, measured.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence, Sized

import numpy as np
import onnx

from opendlc.analysis.measure import LayerError, OutputReference, layer_errors
from opendlc.analysis.report import (
    EncodingRow,
    LayerRow,
    Report,
    SensitivityRow,
    Verdict,
    VerdictStep,
)
from opendlc.analysis.svg import DisplayHistogram, display_histogram
from opendlc.analysis.variants import (
    Item,
    copy_set,
    keep_only,
    options_of,
    parameter_plan,
    promote,
    promotion_target,
)
from opendlc.container import Container
from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.errors import UsageError
from opendlc.observers import TensorStats
from opendlc.progress import track
from opendlc.quant.api import quantize
from opendlc.quant.calibrate import collect_statistics
from opendlc.quant.export import to_qdq_model
from opendlc.quant.options import QuantizerOptions
from opendlc.quant.plan import QuantPlan

log = logging.getLogger("opendlc.analysis")

Sample = Mapping[str, np.ndarray]
OVERRIDES_VERSION = "0.6.1"  # what the SDK's quantizers dump and its converter reads
POOL = 4  # items tried per round of the verdict's forward selection


def analyze(
    container: Container,
    samples: Iterable[Sample],
    *,
    options: QuantizerOptions | None = None,
    heldout: Iterable[Sample] | None = None,
    sensitivity_samples: int = 4,
    candidates: int = 12,
    max_keep: int = 4,
    min_gain_db: float = 0.5,
    progress: bool = True,
) -> Report:
    """Analyse ``container``'s quantization on ``samples``.

    A float container is quantized first with ``options`` (default: the quantizer's defaults); a
    quantized one is analysed as it is, with the options recorded in its encodings (or ``options``).
    ``samples`` (re-iterable; read several times) give the statistics and per-layer SQNR, and are the
    calibration inputs of every re-quantization.  Sensitivity and the verdict are measured on the first
    ``sensitivity_samples`` of ``heldout`` (default: of ``samples``).  ``candidates``: how many of the
    worst activations by each per-layer measure (SQNR against FP32, own encoding's SQNR, SQNR lost
    where computed) get a sensitivity run (0: every activation); the weights of every layer that has
    weights get one too.  ``max_keep``: at most this many items in the verdict; an item
    is kept only if it raises the output SQNR by ``min_gain_db``.
    """
    if sensitivity_samples < 1:
        raise UsageError("sensitivity needs at least 1 sample")
    if candidates < 0 or max_keep < 0:
        raise UsageError("candidates and max_keep cannot be negative")
    samples = _reiterable(samples)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    notes: list[str] = []

    float_input = container.encodings is None
    if float_input:
        options = options or QuantizerOptions()
        log.info("quantizing first (the model has no encodings)")
        container = quantize(container, _calibration(samples, options), options, progress=progress)
        timings["quantize"] = time.perf_counter() - clock
    else:
        options = options_of(container, options)
    assert container.encodings is not None
    model, encodings = container.model, container.encodings
    udo = [*options.udo_package_path, *options.op_package_lib]
    n_samples = len(samples)

    order = _activation_order(model)
    producer = _producers(model)
    acts = [a for a in order if a in encodings and encodings[a].kind == "activation"]
    act_encodings = {a: encodings[a] for a in acts}

    clock = time.perf_counter()
    stats = collect_statistics(
        model, samples, acts, histograms=True, total=n_samples, udo_packages=udo, progress=progress
    )
    timings["statistics"] = time.perf_counter() - clock

    clock = time.perf_counter()
    qdq = to_qdq_model(container)
    errors = layer_errors(model, qdq, act_encodings, samples, total=n_samples, udo=udo, progress=progress)
    timings["per-layer SQNR"] = time.perf_counter() - clock

    layers, histograms = _layer_rows(model, acts, encodings, stats, errors, producer)

    clock = time.perf_counter()
    held_source = samples if heldout is None else heldout
    held = list(itertools.islice(iter(held_source), sensitivity_samples))
    if not held:
        raise UsageError("no samples for the sensitivity runs")
    reference = OutputReference(model, held, udo)
    output_sqnr = reference.sqnr(qdq)
    baseline = min(output_sqnr.values())

    # where the error comes from: only the activations quantized, only the parameters
    split = {}
    for kind in ("activation", "param"):
        only = keep_only(encodings, [n for n, t in encodings.tensors.items() if t.kind == kind])
        split[f"{kind}s only"] = reference.worst_sqnr(to_qdq_model(Container(model, only)))

    plan = parameter_plan(model)
    items = _candidates(layers, encodings, plan, candidates)
    sensitivity = _sensitivity(model, encodings, items, reference, progress)
    n_act = sum(1 for i in items if i.kind == "activation")
    skipped = sum(1 for r in layers if r.source in ("calibration", "overrides", "qdq")) - n_act
    chosen = (
        "every activation"
        if not candidates
        else (
            f"the {candidates} worst by SQNR against FP32, by their own encoding's SQNR and by the SQNR "
            "lost where they are computed"
        )
    )
    how = (
        f"{n_act} activations ({chosen}) and the weights of all {len(items) - n_act} layers with "
        f"weights, each quantized alone (everything else float), on {len(held)} sample(s)"
        + ("" if heldout is None else " held out from the calibration data")
        + f"; {max(skipped, 0)} other activations with encodings of their own were not run"
        + " (their per-layer SQNR is shown); encodings a backend constraint replaced follow the tensor "
        "they came from."
    )
    timings["sensitivity"] = time.perf_counter() - clock

    clock = time.perf_counter()
    verdict = _verdict(
        container,
        samples,
        options,
        stats,
        sensitivity,
        reference,
        baseline,
        float_input=float_input,
        max_keep=max_keep,
        min_gain_db=min_gain_db,
        progress=progress,
    )
    timings["verdict"] = time.perf_counter() - clock
    if float_input:
        notes.append(f"the model was quantized by the analysis on its {n_samples} samples")

    return Report(
        model=str(container.meta.get("quantized_from") or container.path or "model"),
        options=options.to_dict(),
        samples=n_samples,
        sensitivity_samples=len(held),
        output_sqnr=output_sqnr,
        error_split=split,
        layers=layers,
        sensitivity=sensitivity,
        sensitivity_how=how,
        histograms=histograms,
        encodings=encoding_rows(encodings, plan, options),
        verdict=verdict,
        timings=timings,
        notes=notes,
    )


# ---- helpers ------------------------------------------------------------------------------------------
def _reiterable(samples: Iterable[Sample]) -> Sequence[Sample] | Sized:
    """Samples are read several times and counted: anything but a sized re-iterable collection (a
    generator, say) is kept in memory."""
    if isinstance(samples, Sized) and iter(samples) is not samples:
        return samples  # type: ignore[return-value]
    return list(samples)


def _calibration(samples: Iterable[Sample], options: QuantizerOptions) -> Iterable[Sample] | None:
    # float fallback takes its encodings from the stored overrides, not from samples
    return None if options.enable_float_fallback else samples


def _activation_order(model: onnx.ModelProto) -> list[str]:
    names = [i.name for i in model.graph.input]
    names += [o for n in model.graph.node for o in n.output if o]
    return names


def _producers(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    return {o: (n.name or n.op_type, n.op_type) for n in model.graph.node for o in n.output}


def _range(t: TensorEncoding) -> tuple[float | None, float | None]:
    if t.dtype != "int" or not t.encodings:
        return None, None
    return min(e.min for e in t.encodings), max(e.max for e in t.encodings)


def _layer_rows(
    model: onnx.ModelProto,
    acts: list[str],
    encodings: EncodingSet,
    stats: Mapping[str, TensorStats],
    errors: Mapping[str, LayerError],
    producer: Mapping[str, tuple[str, str]],
) -> tuple[list[LayerRow], dict[str, DisplayHistogram]]:
    drops = sqnr_drops(model, {a: errors[a].sqnr_db for a in acts})
    layers, histograms = [], {}
    for a in acts:
        t = encodings[a]
        lo, hi = _range(t)
        h = display_histogram(stats[a], lo, hi, t.encodings[0].scale if lo is not None else 0.0)
        if h is not None:
            histograms[a] = h
        node, op = producer.get(a, ("(graph input)", "Input"))
        e = errors[a]
        layers.append(
            LayerRow(
                a,
                node,
                op,
                t.bitwidth,
                e.sqnr_db,
                e.encoding_sqnr_db,
                drops[a],
                h.clipped_fraction if h else 0.0,
                t.source,
            )
        )
    return layers, histograms


def sqnr_drops(model: onnx.ModelProto, sqnr: Mapping[str, float], cap: float = 100.0) -> dict[str, float]:
    """SQNR lost where each tensor is computed: the lowest SQNR of the measured tensors feeding it
    (through unmeasured ones, such as fused pre-activations) minus its own.  Tensors fed by nothing
    measured lose nothing here by this measure (their own encoding's SQNR tells their cost)."""
    constants = {t.name for t in model.graph.initializer}
    feeding: dict[str, set[str]] = {}  # tensor -> the measured tensors it is computed from
    for node in model.graph.node:  # in topological order, so inputs are done first
        found: set[str] = set()
        for i in node.input:
            if i and i not in constants:
                found |= {i} if i in sqnr else feeding.get(i, set())
        for o in node.output:
            feeding[o] = found

    out = {}
    for t, s in sqnr.items():
        inputs = [min(sqnr[i], cap) for i in feeding.get(t, ())]
        out[t] = (min(inputs) - min(s, cap)) if inputs else 0.0
    return out


def _candidates(layers: list[LayerRow], encodings: EncodingSet, plan: QuantPlan, n: int) -> list[Item]:
    """The activations that matter (the ``n`` worst by each per-layer measure; every one when ``n`` is
    0) and every layer's weights."""
    own = [
        r
        for r in layers
        if r.source not in ("constraint", "propagated") and encodings[r.tensor].dtype == "int"
    ]
    if n:
        worst = sorted(own, key=lambda r: r.sqnr_db)[:n]
        worst_own = sorted(own, key=lambda r: r.encoding_sqnr_db)[:n]
        worst_drop = sorted(own, key=lambda r: -r.drop_db)[:n]
        chosen = {r.tensor for r in [*worst, *worst_own, *worst_drop]}
    else:
        chosen = {r.tensor for r in own}
    items = [Item("activation", r.tensor, r.layer, r.op_type) for r in own if r.tensor in chosen]
    bias_of = {u.node: name for name, u in plan.params.items() if u.role == "bias"}
    for name, use in plan.params.items():
        if use.role != "weight" or name not in encodings or encodings[name].dtype != "int":
            continue
        params = [name]
        bias = bias_of.get(use.node)
        if bias and bias in encodings and encodings[bias].dtype == "int":
            params.append(bias)
        items.append(Item("weights", name, use.node or use.op_type, use.op_type, tuple(params)))
    return items


def _sensitivity(
    model: onnx.ModelProto,
    encodings: EncodingSet,
    items: list[Item],
    reference: OutputReference,
    progress: bool,
) -> list[SensitivityRow]:
    """Output SQNR with only each item quantized, most harmful first."""
    rows = []
    for item in track(items, "sensitivity", total=len(items), unit="runs", enabled=progress):
        variant = keep_only(encodings, list(item.params) or [item.tensor])
        rows.append(SensitivityRow(item, reference.worst_sqnr(to_qdq_model(Container(model, variant)))))
    return sorted(rows, key=lambda r: r.output_sqnr_db)


def _verdict(
    container: Container,
    samples: Iterable[Sample],
    options: QuantizerOptions,
    stats: Mapping,
    sensitivity: list[SensitivityRow],
    reference: OutputReference,
    baseline: float,
    *,
    float_input: bool,
    max_keep: int,
    min_gain_db: float,
    progress: bool,
) -> Verdict:
    model, encodings = container.model, container.encodings
    assert encodings is not None
    chosen: list[Item] = []
    current = baseline
    steps: list[VerdictStep] = []
    covered: set[str] = set()  # tensors the kept promotions changed (with those sharing their encodings)
    tied: set[Item] = set()  # items a backend constraint ties to an encoding they cannot change alone
    ranked = [r.item for r in sensitivity if math.isfinite(r.output_sqnr_db)]
    # forward selection: each round tries the most harmful items not yet kept on top of those kept, and
    # keeps the best if it gains enough (errors of a badly quantized model do not simply add up, so
    # the order of the sensitivity ranking alone is not trusted)
    runs = track(range(POOL * max_keep), "choosing", unit="runs", enabled=progress)
    for round_ in range(1, max_keep + 1):
        pool = [i for i in ranked if i not in chosen and i not in tied and i.tensor not in covered][:POOL]
        best: tuple[float, Item, set[str], VerdictStep] | None = None
        for item in pool:
            overrides, mixed = promote(model, encodings, [*chosen, item], stats, options)
            if set(overrides.tensors) <= covered:
                tied.add(item)
                continue
            sqnr = reference.worst_sqnr(to_qdq_model(Container(model, mixed)))
            next(runs, None)
            step = VerdictStep(
                item, promotion_target(item.kind, options), sqnr, sqnr - current, False, round_
            )
            steps.append(step)
            if best is None or sqnr > best[0]:
                best = (sqnr, item, set(overrides.tensors), step)
        if best is None or best[0] - current < min_gain_db:
            break
        best[3].kept = True
        current, covered = best[0], best[2]
        chosen.append(best[1])
    for _ in runs:  # the bar counted the most runs there could be: complete it
        pass
    how = (
        f"output SQNR on the {len(reference.samples)} sensitivity sample(s); forward selection: each "
        f"round promotes each of the {POOL} most harmful items not yet kept on top of those kept, and "
        f"keeps the best if it raises the output SQNR by at least {min_gain_db} dB (at most {max_keep})"
    )
    if not chosen:
        return Verdict(
            [],
            baseline,
            baseline,
            0.0,
            baseline,
            steps,
            None,
            how_measured=how,
            summary=f"No single layer promoted to higher precision raised the output SQNR by "
            f"{min_gain_db} dB or more: the error is spread over the network (try a different "
            "calibration method, per-channel weights, or 16-bit activations throughout).",
        )
    overrides, _ = promote(model, encodings, chosen, stats, options)
    # the overrides go through the AIMET file format and back, as `convert --quantization_overrides`
    # reads them, and the model is re-quantized with them stored: that is the gain stated
    text = json.dumps(overrides.to_aimet(OVERRIDES_VERSION))
    reread = EncodingSet.from_aimet(json.loads(text), where="analysis overrides")
    requantized = quantize(
        Container(model, overrides=_merged(container.overrides, reread)),
        _calibration(samples, options),
        options,
        progress=progress,
    )
    after = reference.worst_sqnr(to_qdq_model(requantized))
    before = baseline
    if not float_input:  # the container came quantized: its calibration data may differ from ours
        again = quantize(
            Container(model, overrides=container.overrides),
            _calibration(samples, options),
            options,
            progress=progress,
        )
        before = reference.worst_sqnr(to_qdq_model(again))
        how += "; baseline and gain from re-quantizing on the analysis samples without and with the overrides"
    else:
        how += "; gain from re-quantizing on the same samples with the overrides file read back"
    names = ", ".join(f"{i.tensor} ({'weights' if i.kind == 'weights' else 'activation'})" for i in chosen)
    targets = sorted({promotion_target(i.kind, options) for i in chosen})
    summary = (
        f"Keep {len(chosen)} item(s) at {' / '.join(targets)}: {names}. Re-quantizing with the overrides "
        f"file raises the output SQNR from {before:.2f} dB to {after:.2f} dB ({after - before:+.2f} dB, "
        "measured)."
    )
    return Verdict(
        [(i, promotion_target(i.kind, options)) for i in chosen],
        before,
        after,
        after - before,
        current,
        steps,
        overrides,
        how_measured=how,
        summary=summary,
    )


def _merged(stored: EncodingSet | None, newer: EncodingSet) -> EncodingSet:
    out = copy_set(stored) if stored is not None else EncodingSet()
    out.tensors.update(newer.tensors)
    return out


def _role(name: str, plan: QuantPlan) -> str:
    use = plan.params.get(name)
    return use.role if use is not None and use.role != "other" else "param"


def _method(t: TensorEncoding, role: str, options: QuantizerOptions) -> str:
    if t.dtype == "float":
        return f"float{t.float_bitwidth or 32}"
    if t.source in ("overrides", "qdq", "propagated"):
        return t.source
    if t.kind == "activation":
        method = f"{options.act_quantizer_calibration} / {options.act_quantizer_schema}"
    elif role == "bias" and options.bias_bitwidth == 32 and t.encodings[0].bitwidth == 32:
        method = "derived (input scale x weight scale)"
    else:
        axis = " per-channel" if t.per_channel else ""
        method = f"{options.param_quantizer_calibration} / {options.param_quantizer_schema}{axis}"
    if t.source == "constraint":
        method += f", then {options.target_backend} constraint"
    return method


def encoding_rows(encodings: EncodingSet, plan: QuantPlan, options: QuantizerOptions) -> list[EncodingRow]:
    rows = []
    for name, t in encodings.tensors.items():
        role = "activation" if t.kind == "activation" else _role(name, plan)
        es = t.encodings
        rows.append(
            EncodingRow(
                name,
                role,
                t.bitwidth if t.dtype == "int" else f"float{t.float_bitwidth or 32}",
                [e.scale for e in es],
                [e.offset for e in es],
                [e.min for e in es],
                [e.max for e in es],
                _method(t, role, options),
                t.axis,
            )
        )
    return rows
