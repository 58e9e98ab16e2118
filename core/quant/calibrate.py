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
    """Statistics of ``tensors`` over ``samples`` (graph inputs included when named)."""
    sess = cpu_session(with_outputs(model, tensors), udo_packages=udo_packages)
    input_names = [i.name for i in sess.get_inputs()]
    outputs = [o for o in tensors if o not in input_names]
    stats = {t: TensorStats(bins=BINS if histograms else 0) for t in tensors}
    count = 0
    for sample in track(samples, "calibrating", total=total, enabled=progress):
        missing = [n for n in input_names if n not in sample]
        if missing:
            raise UsageError(f"calibration sample {count} lacks input(s) {', '.join(missing)}")
        feeds = {n: sample[n] for n in input_names}
        try:
            values = sess.run(outputs, feeds)
        except Exception as e:
            first = str(e).strip().splitlines()[0]
            raise OpendlcError(f"calibration sample {count}: onnxruntime failed: {first}") from None
        for name in input_names:
            if name in stats:
                stats[name].observe(feeds[name])
        for name, value in zip(outputs, values, strict=True):
            stats[name].observe(value)
        count += 1
    if count == 0:
        raise UsageError("no calibration samples: the input list is empty")
    log.info("calibrated %d tensors on %d samples", len(tensors), count)
    for name, s in stats.items():
        if s.nonfinite:
            log.warning("tensor '%s': %d NaN/Inf values were ignored during calibration", name, s.nonfinite)
    return stats
