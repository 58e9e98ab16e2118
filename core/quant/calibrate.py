"""Streaming calibration: run the float model over the inputs and observe every activation.

One sample at a time, so memory holds one sample's activations plus bounded per-tensor statistics,
whatever the number of samples.  The statistics are mergeable (:meth:`TensorStats.merge`), so a data set
can be calibrated in shards and the results combined.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from opendlc.errors import OpendlcError, UsageError
from opendlc.model_edit import inferred_types
from opendlc.observers import BINS, StatsGroup, TensorStats
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
    # Graphs that read intermediate tensors (statistics, per-layer outputs) run up to 1.6x faster in
    # this order: a tensor's readers run right after its producer, while it is still in cache.  The
    # plain forward pass runs at the same speed either way.
    so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
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
# costs ten times the forward pass on a detector; reductions inside the graph cost little.  Over 64
# samples that is 260 K values per tensor for 2048 bins: on the PP-OCR models 4096 gives the same
# accuracy as 16384 (within the run-to-run spread of +-2 dB a different subsample gives), for a quarter
# of the histogram work.
HISTOGRAM_SAMPLE = 4096
_PREFIX = "__opendlc_stat_"
_END = np.iinfo(np.int64).max


@dataclass
class StatisticsOutputs:
    """Where the statistics model puts each tensor's summary.

    ``mins``/``maxs`` (and ``samples``, the subsamples one after another) are single outputs covering
    every tensor in order: few outputs keep onnxruntime's per-output cost down.  A tensor's element
    count and subsample length are known numbers when its shape is static, else outputs of their own.
    """

    tensors: list[str]
    mins: str
    maxs: str
    samples: str | None
    sizes: list[int | str]
    lengths: list[int | str]

    @staticmethod
    def reader(known: list[int | str]) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
        """A function giving ``known`` (sizes or lengths) as an array, the outputs among them read from a
        run's values; the numbers known in advance are laid out once."""
        base = np.array([x if isinstance(x, int) else 0 for x in known], dtype=np.int64)
        dynamic = [(i, x) for i, x in enumerate(known) if isinstance(x, str)]
        if not dynamic:
            return lambda values: base

        def read(values: Mapping[str, np.ndarray]) -> np.ndarray:
            out = base.copy()
            for i, name in dynamic:
                out[i] = int(values[name])
            return out

        return read

    def fetches(self) -> list[str]:
        dynamic = [x for x in (*self.sizes, *self.lengths) if isinstance(x, str)]
        return [self.mins, self.maxs, *([self.samples] if self.samples else []), *dynamic]


def subsample_step(size: int, budget: int | None = None) -> int:
    """The stride of a tensor's subsample: at most about ``budget`` of its ``size`` values.  Mostly
    odd, so strides rarely alias with power-of-two layouts; running through the flattened tensor, every
    channel contributes whatever the layout."""
    return size // (budget or HISTOGRAM_SAMPLE) + 1


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Shapes onnx can infer (unknown dimensions as None); tensors without one take the generic path."""
    return {
        name: [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]
        for name, t in inferred_types(model).items()
        if t.tensor_type.HasField("shape")
    }


def statistics_model(
    model: onnx.ModelProto, tensors: Sequence[str], *, histograms: bool
) -> tuple[onnx.ModelProto, StatisticsOutputs]:
    """``model`` plus outputs for every tensor's min, max, element count and (with ``histograms``) a
    strided subsample of its values."""
    shapes = _static_shapes(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph

    made: dict[tuple[str, bytes], str] = {}

    def const(name: str, value: np.ndarray) -> str:
        # one initializer per distinct value: hundreds of equal ones slow session creation down
        key = (value.dtype.str + str(value.shape), value.tobytes())
        if key not in made:
            g.initializer.append(numpy_helper.from_array(value, f"{_PREFIX}{name}"))
            made[key] = f"{_PREFIX}{name}"
        return made[key]

    flat = const("flat", np.array([-1], dtype=np.int64))
    nodes: list[onnx.NodeProto] = []
    mins, maxs, samples, sizes, lengths = [], [], [], [], []
    for i, t in enumerate(tensors):
        p = f"{_PREFIX}{i}_"
        # Reshape aliases its input in onnxruntime: flattening copies nothing, and reductions of the
        # flat view come out as [1], ready to concatenate
        nodes.append(helper.make_node("Reshape", [t, flat], [f"{p}flat"]))
        for op, acc in (("ReduceMin", mins), ("ReduceMax", maxs)):
            nodes.append(helper.make_node(op, [f"{p}flat"], [f"{p}{op}"], keepdims=1))
            acc.append(f"{p}{op}")
        shape = shapes.get(t)
        static = shape is not None and all(shape)
        if static:
            sizes.append(math.prod(shape))
        else:
            nodes.append(helper.make_node("Size", [t], [f"{p}size"]))
            sizes.append(f"{p}size")
        if not histograms:
            continue
        sample = f"{p}sample"
        if static:
            step = const(f"{i}_step", np.array([subsample_step(sizes[-1])], dtype=np.int64))
        else:  # the stride follows the size of each sample
            step = f"{p}step"
            nodes += [
                helper.make_node(
                    "Div", [f"{p}size", const(f"{i}_budget", np.array(HISTOGRAM_SAMPLE))], [f"{p}q"]
                ),
                helper.make_node("Add", [f"{p}q", const(f"{i}_one", np.array(1))], [f"{p}step0"]),
                helper.make_node(
                    "Reshape", [f"{p}step0", const("one1d", np.array([1], dtype=np.int64))], [step]
                ),
            ]
        nodes.append(
            helper.make_node(
                "Slice",
                [
                    f"{p}flat",
                    const(f"{i}_zero", np.array([0])),
                    const(f"{i}_end", np.array([_END])),
                    const(f"{i}_axis", np.array([0])),
                    step,
                ],
                [sample],
            )
        )
        samples.append(sample)
        if static:
            lengths.append(-(-sizes[-1] // subsample_step(sizes[-1])))
        else:
            nodes.append(helper.make_node("Size", [sample], [f"{p}length"]))
            lengths.append(f"{p}length")
    names = StatisticsOutputs(list(tensors), f"{_PREFIX}mins", f"{_PREFIX}maxs", None, sizes, lengths)
    nodes += [
        helper.make_node("Concat", mins, [names.mins], axis=0),
        helper.make_node("Concat", maxs, [names.maxs], axis=0),
    ]
    if histograms and samples:
        names.samples = f"{_PREFIX}samples"
        nodes.append(helper.make_node("Concat", samples, [names.samples], axis=0))
    g.node.extend(nodes)
    g.output.extend(onnx.ValueInfoProto(name=o) for o in names.fetches())
    return out, names


def calibration_workers() -> int:
    """How many samples calibration runs at once: one single-threaded session per core (at most 4), or
    ``OPENDLC_CALIBRATION_WORKERS``.

    Observing every tensor splits the float model into many small kernels that one session cannot
    spread over several cores; whole samples can be, and mergeable statistics make that exact.  Each
    session holds its own activations: with little memory to spare, set the variable to 1.
    """
    forced = os.environ.get("OPENDLC_CALIBRATION_WORKERS", "").strip()
    if forced:
        if not forced.isdigit() or int(forced) < 1:
            raise UsageError(f"OPENDLC_CALIBRATION_WORKERS must be a positive integer, not {forced!r}")
        return int(forced)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def collect_statistics(
    model: onnx.ModelProto,
    samples: Iterable[Mapping[str, np.ndarray]],
    tensors: Sequence[str],
    *,
    histograms: bool = True,
    total: int | None = None,
    udo_packages: Sequence[str] = (),
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, TensorStats]:
    """Statistics of ``tensors`` (graph inputs and node outputs) over ``samples``.

    Each of ``workers`` threads (default :func:`calibration_workers`; one with user-defined ops) runs
    its own session on one sample at a time and keeps its own statistics; merging them at the end gives
    exactly the statistics of a single pass, whatever sample went to which worker.
    """
    stats_model, names = statistics_model(model, tensors, histograms=histograms)
    count = workers or (1 if udo_packages else calibration_workers())
    source = iter(enumerate(track(samples, "calibrating", total=total, enabled=progress)))
    lock = threading.Lock()
    stop = threading.Event()

    def next_sample() -> tuple[int, Mapping[str, np.ndarray]] | None:
        with lock:
            return None if stop.is_set() else next(source, None)

    def work() -> tuple[dict[str, TensorStats], int]:
        try:
            return _Worker(stats_model, model, names, histograms, udo_packages, count).run(next_sample)
        except BaseException:
            stop.set()
            raise

    with ThreadPoolExecutor(max_workers=count) as pool:
        results = [f.result() for f in [pool.submit(work) for _ in range(count)]]
    seen = sum(n for _, n in results)
    if seen == 0:
        raise UsageError("no calibration samples: the input list is empty")
    stats = {t: functools.reduce(TensorStats.merge, [r[t] for r, _ in results]) for t in tensors}
    log.info("calibrated %d tensors on %d samples (%d at a time)", len(tensors), seen, count)
    for name, s in stats.items():
        if s.nonfinite:
            log.warning("tensor '%s': %d NaN/Inf values were ignored during calibration", name, s.nonfinite)
    return stats


class _Worker:
    """One session and the statistics of the samples it ran."""

    def __init__(
        self,
        stats_model: onnx.ModelProto,
        model: onnx.ModelProto,
        names: StatisticsOutputs,
        histograms: bool,
        udo_packages: Sequence[str],
        workers: int,
    ) -> None:
        self.sess = cpu_session(stats_model, udo_packages=udo_packages, threads=1 if workers > 1 else 0)
        self.model, self.names, self.udo = model, names, udo_packages
        self.input_names = [i.name for i in self.sess.get_inputs()]
        self.stats = {t: TensorStats(bins=BINS if histograms else 0) for t in names.tensors}
        self.group = StatsGroup([self.stats[t] for t in names.tensors])
        self.full_session: ort.InferenceSession | None = None  # whole tensors, for NaN/Inf samples
        self.fetch = names.fetches()
        self.sizes, self.lengths = names.reader(names.sizes), names.reader(names.lengths)

    def run(self, next_sample: Callable[[], tuple[int, Mapping[str, np.ndarray]] | None]):
        count = 0
        while (item := next_sample()) is not None:
            self.observe(*item)
            count += 1
        return self.stats, count

    def observe(self, index: int, sample: Mapping[str, np.ndarray]) -> None:
        names = self.names
        missing = [n for n in self.input_names if n not in sample]
        if missing:
            raise UsageError(f"calibration sample {index} lacks input(s) {', '.join(missing)}")
        feeds = {n: sample[n] for n in self.input_names}
        values = dict(zip(self.fetch, _run(self.sess, self.fetch, feeds, index), strict=True))
        lo, hi = values[names.mins].astype(np.float64), values[names.maxs].astype(np.float64)
        sizes = self.sizes(values)
        finite = np.isfinite(lo) & np.isfinite(hi)
        subsample, lengths = None, None
        if names.samples:
            subsample = values[names.samples]
            lengths = self.lengths(values)
        if not finite.all():  # such tensors are observed in full below
            lo, hi, sizes = np.where(finite, lo, 0.0), np.where(finite, hi, 0.0), np.where(finite, sizes, 0)
            if lengths is not None:
                subsample = subsample[np.repeat(finite, lengths)]
                lengths = np.where(finite, lengths, 0)
        self.group.observe_summaries(lo, hi, sizes, subsample, lengths)
        nonfinite = [names.tensors[i] for i in np.nonzero(~finite)[0]]
        if nonfinite:
            self.full_session = self.full_session or cpu_session(
                with_outputs(self.model, names.tensors), udo_packages=self.udo
            )
            wanted = [t for t in nonfinite if t not in self.input_names]
            # (no names would make onnxruntime return every output)
            for t, v in zip(
                wanted, _run(self.full_session, wanted, feeds, index) if wanted else [], strict=True
            ):
                self.stats[t].observe(v)
            for t in nonfinite:
                if t in self.input_names:
                    self.stats[t].observe(feeds[t])
            self.group.refresh(np.nonzero(~finite)[0])


def _run(sess: ort.InferenceSession, outputs: list[str], feeds: dict[str, np.ndarray], index: int) -> list:
    try:
        return sess.run(outputs, feeds)
    except Exception as e:
        first = str(e).strip().splitlines()[0]
        raise OpendlcError(f"calibration sample {index}: onnxruntime failed: {first}") from None
