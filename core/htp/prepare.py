"""Offline HTP preparation of a container: one cache record per SoC or architecture, in parallel.

``prepare_container(container, socs=..., archs=..., overwrite=..., **options)`` is what
``snpe-dlc-graph-prepare``, ``opendlc graph-prepare`` and ``snpe-dlc-quantize --enable_htp`` call.  The
quantized container becomes one QDQ model (inputs re-shaped, outputs added, IO buffer types set); the
``htp`` graph-preparer plugin compiles it once per target in worker processes; each result is a
:class:`~opendlc.container.CacheRecord` whose manifest entry says what it is for and how it was made.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from queue import Empty
from typing import Any

import onnx

from opendlc.container import CacheRecord, Container
from opendlc.errors import OpendlcError, UsageError
from opendlc.htp import qdq
from opendlc.htp._native import terminal_console
from opendlc.htp.qnn import library_versions
from opendlc.input_list import input_specs, resolve_outputs
from opendlc.model_edit import set_input_shapes
from opendlc.plugin_manager import get_plugin_manager
from opendlc.prepare import PreparedRecord, PrepareTarget

log = logging.getLogger("opendlc.htp")

DEFAULT_SOC = "sm8650"
PREPARER = "htp"
RECORD_PREFIX = "htp-"
# What the HTP compiler offers that onnxruntime-qnn does not pass on: recorded, and said so.
_NOT_APPLIED_WHY = "onnxruntime-qnn's HTP execution provider has no option that sets it"


@dataclass
class HtpPrepareOptions:
    """Options of ``snpe-dlc-graph-prepare`` (besides the targets), as the Python API takes them."""

    optimization_level: int = 2
    optimization_preset: int | None = None
    buffer_data_types: dict[str, str] = field(default_factory=dict)
    use_float_io: bool = False
    htp_dlbc: bool = False
    num_hvx_threads: int | None = None
    memorymapped_buffer_hint: bool = False
    input_dimensions: dict[str, list[int]] = field(default_factory=dict)
    output_tensors: list[str] = field(default_factory=list)
    output_layers: list[str] = field(default_factory=list)
    udo_package_path: list[str] = field(default_factory=list)
    vtcm_override: int | None = None  # MB; 0 = the SoC's maximum
    fp16: bool = True  # float parts of a mixed graph run in float16 (HTP's float)
    jobs: int | None = None  # worker processes (default: one per core)
    progress: bool = True

    def validate(self) -> None:
        if self.optimization_level not in (1, 2, 3):
            raise UsageError(f"--optimization_level {self.optimization_level}: choose 1, 2 or 3")
        if self.optimization_preset is not None:
            if self.optimization_preset < 0:
                raise UsageError(f"--optimization_preset {self.optimization_preset}: must be >= 0")
            if self.optimization_level != 3:
                raise UsageError("--optimization_preset is used with --optimization_level 3")
        if self.num_hvx_threads is not None and self.num_hvx_threads <= 0:
            raise UsageError(f"--num_hvx_threads {self.num_hvx_threads}: must be greater than 0")
        if self.vtcm_override is not None and self.vtcm_override < 0:
            raise UsageError(f"--vtcm_override {self.vtcm_override}: must be >= 0 (0 = the SoC's maximum)")
        for name, kind in self.buffer_data_types.items():
            if kind not in qdq.BUFFER_TYPES:
                raise UsageError(
                    f"--buffer_data_type {name}={kind}: choose one of {', '.join(qdq.BUFFER_TYPES)}"
                )
        for name, dims in self.input_dimensions.items():
            if not dims or any(int(d) <= 0 for d in dims):
                raise UsageError(f"--input_dimensions for '{name}': positive dimensions needed, got {dims}")
        if self.jobs is not None and self.jobs < 1:
            raise UsageError(f"jobs {self.jobs}: must be >= 1")

    def not_applied(self) -> dict[str, Any]:
        """Requested settings that are recorded but not applied to the binary."""
        out: dict[str, Any] = {}
        if self.htp_dlbc:
            out["htp_dlbc"] = True
        if self.num_hvx_threads is not None:
            out["num_hvx_threads"] = self.num_hvx_threads
        if self.memorymapped_buffer_hint:
            out["memorymapped_buffer_hint"] = True
        if self.optimization_preset:
            out["optimization_preset"] = self.optimization_preset
        return out


@dataclass
class TargetResult:
    record_id: str
    target: PrepareTarget
    status: str  # prepared | replaced | skipped
    record: CacheRecord
    seconds: float = 0.0


@dataclass
class PrepareReport:
    container: Container
    results: list[TargetResult]


# ---- targets ---------------------------------------------------------------------------------------
def _names(value: str | Iterable[str] | None, option: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    names = [n.strip() for item in items for n in str(item).split(",")]
    if any(not n for n in names):
        raise UsageError(f"{option}: empty name in '{','.join(items)}' (comma-separated, no spaces)")
    return list(dict.fromkeys(names))


def resolve_targets(
    socs: str | Iterable[str] | None, archs: str | Iterable[str] | None, vtcm_override: int | None = None
) -> list[PrepareTarget]:
    """The targets of ``--htp_socs`` / ``--htp_archs`` (default: sm8650), checked against the plugins."""
    soc_names, arch_names = _names(socs, "--htp_socs"), _names(archs, "--htp_archs")
    if soc_names and arch_names:
        raise UsageError("--htp_socs and --htp_archs are mutually exclusive")
    if arch_names and vtcm_override is not None:
        raise UsageError("--vtcm_override cannot be used with --htp_archs (it applies to SoCs)")
    pm = get_plugin_manager()
    targets: list[PrepareTarget] = []
    for name in arch_names:
        arch = pm.htp_archs.get(name)
        targets.append(PrepareTarget(arch=arch.name))
    for name in soc_names or ([] if arch_names else [DEFAULT_SOC]):
        soc = pm.socs.get(name)
        if soc.htp_arch not in pm.htp_archs:
            raise UsageError(
                f"SoC {soc.name} names HTP architecture {soc.htp_arch}, which no plugin provides"
            )
        vtcm = soc.vtcm_mb if not vtcm_override else vtcm_override
        if vtcm_override is not None and vtcm_override > soc.vtcm_mb:
            raise UsageError(
                f"--vtcm_override {vtcm_override} MB is more than {soc.name}'s VTCM ({soc.vtcm_mb} MB)"
            )
        targets.append(
            PrepareTarget(
                arch=pm.htp_archs.get(soc.htp_arch).name, soc=soc.name, soc_model=soc.soc_model, vtcm_mb=vtcm
            )
        )
    return targets


def record_id(target: PrepareTarget) -> str:
    return RECORD_PREFIX + (target.soc or target.arch)


def _target_json(target: PrepareTarget) -> dict[str, Any]:
    return {
        "soc": target.soc,
        "soc_model": target.soc_model,
        "arch": target.arch,
        "vtcm_mb": target.vtcm_mb or None,
    }


# ---- the model -------------------------------------------------------------------------------------
@dataclass
class PreparedModel:
    """The QDQ model every target compiles, and what the records say about its IO."""

    model: bytes
    sha256: str
    inputs: list[qdq.Buffer]
    outputs: list[qdq.Buffer]
    extra_outputs: list[str]


def prepare_model(container: Container, options: HtpPrepareOptions) -> PreparedModel:
    """The container's QDQ model with the options' shapes, outputs and IO buffer types applied."""
    model, notes = qdq.lower_for_htp(qdq.qdq_model_for(container))
    for note in notes:
        log.log(15, "HTP lowering: %s", note)
    if options.input_dimensions:
        model = set_input_shapes(model, {k: [int(d) for d in v] for k, v in options.input_dimensions.items()})
    try:
        input_specs(model)
    except UsageError as e:
        if "dynamic shape" not in str(e):
            raise
        name = str(e).split("'")[1]
        raise UsageError(
            f"input '{name}' has a dynamic shape; give it one with --input_name {name} "
            "--input_dimensions 1,3,224,224 (your dimensions)"
        ) from None
    extra = resolve_outputs(model, options.output_layers, options.output_tensors)
    if extra:
        model = qdq.expose_outputs(model, extra)
    _check_udo(model, options.udo_package_path)
    model, inputs, outputs = qdq.apply_buffer_types(
        model, options.buffer_data_types, use_float_io=options.use_float_io
    )
    qdq.name_nodes(model)  # so what the HTP compiler says about a node can be traced back
    data = model.SerializeToString()
    return PreparedModel(data, hashlib.sha256(data).hexdigest(), inputs, outputs, extra)


def _check_udo(model: onnx.ModelProto, packages: Sequence[str]) -> None:
    """UDO packages are loaded (so a wrong path is a clear error); their nodes cannot go to HTP."""
    if not packages:
        return
    try:
        from opendlc.udo_gen import host_ops
    except ImportError:
        raise UsageError("--udo_package_path: UDO packages are not supported by this opendlc") from None
    hosts = [host_ops.load_host_package(p) for p in host_ops.split_package_paths(list(packages))]
    udo_nodes = [
        n.name or n.op_type
        for n in model.graph.node
        for h in hosts
        if h.operator(n.op_type) is not None and n.domain not in ("", "ai.onnx", "com.microsoft")
    ]
    if udo_nodes:
        raise UsageError(
            f"user-defined op node(s) {', '.join(udo_nodes[:5])} cannot be prepared for HTP: opendlc's UDO "
            "packages run on the host CPU, and onnxruntime-qnn's HTP compiler takes no opendlc package"
        )
    log.info("no node of the model belongs to UDO package(s) %s", ", ".join(h.name for h in hosts))


# ---- preparing -------------------------------------------------------------------------------------
def _record_key(target: PrepareTarget, prepared: PreparedModel, options_used: dict[str, Any]) -> str:
    blob = json.dumps(
        {"target": _target_json(target), "model": prepared.sha256, "options": options_used}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _options_used(options: HtpPrepareOptions, prepared: PreparedModel) -> dict[str, Any]:
    d = asdict(options)
    for transient in ("jobs", "progress"):
        d.pop(transient)
    d["output_tensors"] = prepared.extra_outputs  # resolved (layers included)
    d.pop("output_layers")
    return d


def prepare_records(
    container: Container,
    *,
    socs: str | Iterable[str] | None = None,
    archs: str | Iterable[str] | None = None,
    overwrite: bool = False,
    options: HtpPrepareOptions | None = None,
) -> PrepareReport:
    """Prepare ``container`` for every target; return the new container and what happened per target."""
    options = options or HtpPrepareOptions()
    options.validate()
    targets = resolve_targets(socs, archs, options.vtcm_override)
    prepared = prepare_model(container, options)
    used = _options_used(options, prepared)
    for key, value in options.not_applied().items():
        log.warning(
            "--%s %s is recorded in the cache records but not applied: %s", key, value, _NOT_APPLIED_WHY
        )

    existing = {r.id: r for r in container.records}
    keys = {record_id(t): _record_key(t, prepared, used) for t in targets}
    to_make: list[tuple[str, PrepareTarget]] = []
    for target in targets:
        rid = record_id(target)
        old = existing.get(rid)
        if old is not None and not overwrite and old.info.get("key") == keys[rid]:
            log.info("%s: up to date, skipped (--overwrite_cache_records regenerates it)", rid)
            continue
        if old is not None and not overwrite:
            log.info("%s: the stored record was made for other settings or another model; replacing it", rid)
        to_make.append((rid, _with_options(target, options)))

    if to_make:
        library_versions()  # the HTP libraries are there (else one line saying how to get them)
    compiled = _run_jobs(to_make, prepared.model, options) if to_make else {}
    _warn_unquantized(compiled)
    made_records: dict[str, CacheRecord] = {}
    results: list[TargetResult] = []
    for rid, target in to_make:
        made, seconds = compiled[rid]
        info = _record_info(target, made, prepared, used, keys[rid], seconds, options.not_applied())
        made_records[rid] = CacheRecord(rid, info, made.data)
    for target in targets:
        rid = record_id(target)
        if rid in made_records:
            status = "replaced" if rid in existing else "prepared"
            results.append(TargetResult(rid, target, status, made_records[rid], compiled[rid][1]))
        else:
            results.append(TargetResult(rid, target, "skipped", existing[rid]))
    records = [made_records.pop(r.id, r) for r in container.records] + list(made_records.values())
    out = Container(
        model=container.model,
        encodings=container.encodings,
        overrides=container.overrides,
        records=records,
        meta=dict(container.meta),
        path=container.path,
    )
    return PrepareReport(out, results)


def prepare_container(
    container: Container,
    *,
    socs: str | Iterable[str] | None = None,
    archs: str | Iterable[str] | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Container:
    """Prepare ``container`` for HTP SoCs (default sm8650) or architectures; return the new container.

    ``options`` are the fields of :class:`HtpPrepareOptions` (``optimization_level``,
    ``buffer_data_types``, ``use_float_io``, ``vtcm_override``, ...).  A record that already matches a
    target and these settings is kept unless ``overwrite``.
    """
    unknown = sorted(set(options) - set(HtpPrepareOptions.__dataclass_fields__))
    if unknown:
        raise UsageError(f"unknown HTP prepare option(s): {', '.join(unknown)}")
    return prepare_records(
        container, socs=socs, archs=archs, overwrite=overwrite, options=HtpPrepareOptions(**options)
    ).container


def _warn_unquantized(compiled: dict[str, tuple[PreparedRecord, float]]) -> None:
    seen: set[tuple[str, ...]] = set()
    for rid, (made, _) in compiled.items():
        ops = made.info.get("unquantized_ops", [])
        key = tuple(sorted(d["name"] for d in ops))
        if not ops or key in seen:
            continue
        seen.add(key)
        kinds = Counter(d["op_type"] for d in ops)
        log.warning(
            "%s: HTP runs %d node(s) outside a quantized group, unquantized (float16 for float data): %s",
            rid,
            len(ops),
            ", ".join(f"{op} x{n}" for op, n in kinds.most_common()),
        )


def _with_options(target: PrepareTarget, options: HtpPrepareOptions) -> PrepareTarget:
    return PrepareTarget(
        arch=target.arch,
        soc=target.soc,
        soc_model=target.soc_model,
        vtcm_mb=target.vtcm_mb,
        options={"optimization_level": options.optimization_level, "fp16": options.fp16},
    )


def _record_info(
    target: PrepareTarget,
    made: PreparedRecord,
    prepared: PreparedModel,
    used: dict[str, Any],
    key: str,
    seconds: float,
    not_applied: dict[str, Any],
) -> dict[str, Any]:
    graph_io = made.info.get("graph", {})
    compiled = {d["name"]: d for d in (*graph_io.get("inputs", []), *graph_io.get("outputs", []))}

    def io(buffers: list[qdq.Buffer]) -> list[dict[str, Any]]:
        out = []
        for b in buffers:
            d = b.to_json()
            if b.name in compiled:  # what the compiled graph really reads and writes
                d["shape"], d["dtype"] = compiled[b.name]["shape"], compiled[b.name]["dtype"]
            out.append(d)
        return out

    info = {
        "backend": "HTP",
        "preparer": PREPARER,
        **_target_json(target),
        "optimization_level": target.options.get("optimization_level", 2),
        "inputs": io(prepared.inputs),
        "outputs": io(prepared.outputs),
        "sha256": hashlib.sha256(made.data).hexdigest(),
        "model_sha256": prepared.sha256,
        "key": key,
        "options": used,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "prepare_seconds": round(seconds, 2),
        **{k: v for k, v in made.info.items() if k not in ("inputs", "outputs")},
    }
    if not_applied:
        info["not_applied"] = {
            k: f"{v} (recorded, not applied: {_NOT_APPLIED_WHY})" for k, v in not_applied.items()
        }
    return info


# ---- worker processes ------------------------------------------------------------------------------
_progress_queue: Any = None


def _init_worker(queue: Any) -> None:
    global _progress_queue
    _progress_queue = queue


def _compile_job(rid: str, model: bytes, target: PrepareTarget) -> tuple[PreparedRecord, float]:
    """Runs in a worker process: compile ``model`` for ``target`` with the graph-preparer plugin."""
    if _progress_queue is not None:
        _progress_queue.put((rid, "compiling"))
    start = time.monotonic()
    preparer = get_plugin_manager().graph_preparers.get(PREPARER)
    made = preparer.prepare(model, target)
    return made, time.monotonic() - start


def _run_jobs(
    jobs: list[tuple[str, PrepareTarget]], model: bytes, options: HtpPrepareOptions
) -> dict[str, tuple[PreparedRecord, float]]:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    workers = min(len(jobs), options.jobs or os.cpu_count() or 1)
    ctx = multiprocessing.get_context("spawn")  # fresh processes: no inherited onnxruntime state
    queue = ctx.Queue() if options.progress else None
    show = options.progress and logging.getLogger("opendlc").getEffectiveLevel() <= logging.INFO
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description:<22}"),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
    ]
    results: dict[str, tuple[PreparedRecord, float]] = {}
    with Progress(*columns, console=terminal_console(), disable=not show, transient=False) as bar:
        tasks = {rid: bar.add_task(f"HTP {_label(t)}", total=1, state="queued") for rid, t in jobs}
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(queue,)
        ) as pool:
            with _main_hidden_from_spawn():  # the workers are started here
                futures: dict[Future, str] = {
                    pool.submit(_compile_job, rid, model, t): rid for rid, t in jobs
                }
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    for rid, state in _drain(queue):
                        bar.update(tasks[rid], state=state)
                    for f in done:
                        rid = futures[f]
                        if f.exception() is not None:
                            bar.update(tasks[rid], state="failed")
                        made, seconds = f.result()
                        results[rid] = (made, seconds)
                        bar.update(tasks[rid], completed=1, state=f"done ({len(made.data) / 1024:,.0f} KiB)")
            except BrokenProcessPool:
                raise OpendlcError(
                    "an HTP worker process died (the HTP compiler crashed?); run with --debug for its log"
                ) from None
            except BaseException:
                for f in pending:
                    f.cancel()
                raise
    return results


@contextlib.contextmanager
def _main_hidden_from_spawn() -> Iterator[None]:
    """Spawned workers need nothing from ``__main__`` (the job is a function of this module), so they are
    not made to import it: scripts without an ``if __name__ == "__main__":`` guard, ``python -`` and
    notebooks all work."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
    try:
        if main is not None:
            if "__file__" in saved:
                del main.__file__
            if "__spec__" in saved:
                main.__spec__ = None
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def _drain(queue: Any) -> list[tuple[str, str]]:
    items = []
    while queue is not None:
        try:
            items.append(queue.get_nowait())
        except Empty:
            break
    return items


def _label(target: PrepareTarget) -> str:
    return f"{target.soc} ({target.arch})" if target.soc else target.arch


def find_record(container: Container, soc: str | None = None, arch: str | None = None) -> CacheRecord:
    """The HTP record to run for ``soc`` (its own, else its architecture's) or for ``arch``."""
    pm = get_plugin_manager()
    wanted: list[str] = []
    if soc is not None:
        s = pm.socs.get(soc)
        wanted += [RECORD_PREFIX + s.name, RECORD_PREFIX + s.htp_arch]
    if arch is not None:
        wanted.append(RECORD_PREFIX + pm.htp_archs.get(arch).name)
    by_id = {r.id: r for r in container.records}
    for rid in wanted:
        if rid in by_id:
            return by_id[rid]
    have = ", ".join(r.id for r in container.records) or "none"
    where = container.path or "the container"
    target = soc or arch
    option = f"--htp_socs {soc}" if soc else f"--htp_archs {arch}"
    raise UsageError(
        f"{where} has no HTP cache record for {target} (records: {have}); "
        f"prepare one with 'opendlc graph-prepare --input_dlc {where} {option}'"
    )
