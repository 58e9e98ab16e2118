"""Streaming calibration: run the float model over the inputs and observe every activation.

One sample at a time, so memory holds one sample's activations plus bounded per-tensor statistics,
whatever the number of samples.  The statistics are mergeable (:meth:`TensorStats.merge`), so a data set
can be calibrated in shards and the results combined.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from opendlc.errors import OpendlcError, UsageError
from opendlc.observers import BINS, TensorStats
from opendlc.progress import track

log = logging.getLogger("opendlc.quant.calibrate")


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names`` (types left for onnxruntime to infer)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for n in names:
        if n not in present:
            out.graph.output.append(onnx.ValueInfoProto(name=n))
            present.add(n)
    return out


def cpu_session(
    model: onnx.ModelProto, *, udo_packages: Sequence[str] = (), threads: int = 0
) -> ort.InferenceSession:
    """An onnxruntime CPU session; user-defined ops run through their packages' host libraries."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if udo_packages:
        try:
            from opendlc.udo_gen.host_ops import prepare_session
        except ImportError:
            raise OpendlcError(
                "running user-defined ops needs opendlc's UDO support, which is not installed"
            ) from None
        model = prepare_session(model, list(udo_packages), so)
    try:
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OpendlcError(f"onnxruntime cannot run the model: {first}") from None


def float_activation_names(model: onnx.ModelProto, *, udo_packages: Sequence[str] = ()) -> set[str]:
    """Every graph input and node output that onnxruntime reports as float32."""
    names = [o for n in model.graph.node if n.op_type != "Constant" for o in n.output if o]
    sess = cpu_session(with_outputs(model, names), udo_packages=udo_packages, threads=1)
    floats = {o.name for o in sess.get_outputs() if o.type == "tensor(float)"}
    floats |= {i.name for i in sess.get_inputs() if i.type == "tensor(float)"}
    return floats


# Histograms are built from a deterministic strided subsample of at most about this many values per tensor
# and sample; min and max always come from every value.  Copying every activation out of onnxruntime
# costs ten times the forward pass on a detector; reductions inside the graph cost little.
HISTOGRAM_SAMPLE = 16384


def statistics_model(
    model: onnx.ModelProto, tensors: Sequence[str], *, histograms: bool
) -> tuple[onnx.ModelProto, dict[str, tuple[str, str, str, str | None]]]:
    """``model`` plus, per tensor, outputs for its min, max, element count and (with ``histograms``) a
    strided subsample.  Returns the model and tensor -> (min, max, size, sample) output names."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    budget = f"{_PREFIX}budget"
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(HISTOGRAM_SAMPLE, dtype=np.int64), budget),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{_PREFIX}flat"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), f"{_PREFIX}one1d"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), f"{_PREFIX}one"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), f"{_PREFIX}zero1d"),
            numpy_helper.from_array(np.array([np.iinfo(np.int64).max], dtype=np.int64), f"{_PREFIX}end"),
        ]
    )
    names: dict[str, tuple[str, str, str, str | None]] = {}
    for i, t in enumerate(tensors):
        p = f"{_PREFIX}{i}_"
        flat = f"{p}flat"
        nodes = [
            helper.make_node("ReduceMin", [t], [f"{p}min"], keepdims=0),
            helper.make_node("ReduceMax", [t], [f"{p}max"], keepdims=0),
            helper.make_node("Size", [t], [f"{p}size"]),
        ]
        sample = None
        if histograms:
            # step = size // budget + 1: mostly odd, so strides rarely alias with power-of-two layouts
            sample = f"{p}sample"
            nodes += [
                helper.make_node("Reshape", [t, f"{_PREFIX}flat"], [flat]),
                helper.make_node("Div", [f"{p}size", budget], [f"{p}q"]),
                helper.make_node("Add", [f"{p}q", f"{_PREFIX}one"], [f"{p}step0"]),
                helper.make_node("Reshape", [f"{p}step0", f"{_PREFIX}one1d"], [f"{p}step"]),
                helper.make_node(
                    "Slice",
                    [flat, f"{_PREFIX}zero1d", f"{_PREFIX}end", f"{_PREFIX}zero1d", f"{p}step"],
                    [sample],
                ),
            ]
        g.node.extend(nodes)
        outs = [f"{p}min", f"{p}max", f"{p}size"] + ([sample] if sample else [])
        g.output.extend(onnx.ValueInfoProto(name=o) for o in outs)
        names[t] = (f"{p}min", f"{p}max", f"{p}size", sample)
    return out, names


_PREFIX = "__opendlc_stat_"


def collect_statistics(
    model: onnx.ModelProto,
    samples: Iterable[Mapping[str, np.ndarray]],
    tensors: Sequence[str],
    *,
    histograms: bool = True,
    total: int | None = None,
    udo_packages: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, TensorStats]:
    """Statistics of ``tensors`` (graph inputs and node outputs) over ``samples``, one sample at a time."""
    stats_model, names = statistics_model(model, tensors, histograms=histograms)
    sess = cpu_session(stats_model, udo_packages=udo_packages)
    input_names = [i.name for i in sess.get_inputs()]
    fetch = [n for t in tensors for n in names[t] if n]
    stats = {t: TensorStats(bins=BINS if histograms else 0) for t in tensors}
    full_session = None  # fetches whole tensors, only for samples with NaN/Inf values
    count = 0
    for sample in track(samples, "calibrating", total=total, enabled=progress):
        missing = [n for n in input_names if n not in sample]
        if missing:
            raise UsageError(f"calibration sample {count} lacks input(s) {', '.join(missing)}")
        feeds = {n: sample[n] for n in input_names}
        values = dict(zip(fetch, _run(sess, fetch, feeds, count), strict=True))
        nonfinite = []
        for t in tensors:
            lo_n, hi_n, size_n, sample_n = names[t]
            lo, hi = float(values[lo_n]), float(values[hi_n])
            if not (np.isfinite(lo) and np.isfinite(hi)):
                nonfinite.append(t)
                continue
            stats[t].observe_summary(lo, hi, int(values[size_n]), values[sample_n] if sample_n else None)
        if nonfinite:
            full_session = full_session or cpu_session(
                with_outputs(model, tensors), udo_packages=udo_packages
            )
            wanted = [t for t in nonfinite if t not in input_names]
            for t, v in zip(wanted, _run(full_session, wanted, feeds, count), strict=True):
                stats[t].observe(v)
            for t in nonfinite:
                if t in input_names:
                    stats[t].observe(feeds[t])
        count += 1
    if count == 0:
        raise UsageError("no calibration samples: the input list is empty")
    log.info("calibrated %d tensors on %d samples", len(tensors), count)
    for name, s in stats.items():
        if s.nonfinite:
            log.warning("tensor '%s': %d NaN/Inf values were ignored during calibration", name, s.nonfinite)
    return stats


def _run(sess: ort.InferenceSession, outputs: list[str], feeds: dict[str, np.ndarray], index: int) -> list:
    try:
        return sess.run(outputs, feeds)
    except Exception as e:
        first = str(e).strip().splitlines()[0]
        raise OpendlcError(f"calibration sample {index}: onnxruntime failed: {first}") from None
