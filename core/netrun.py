"""``opendlc net-run``: run a container over an input list and write the outputs as snpe-net-run does.

* ``cpu``: onnxruntime on the CPU -- the float model, or for a quantized container the QDQ model
  (``opendlc.quant.export.to_qdq_model``), which simulates the quantized arithmetic.
* ``htp``: the container's cache record for the SoC (or its architecture) on the HTP emulator, as it was
  prepared -- nothing is compiled again.

Outputs go to ``<output_dir>/Result_<N>/<tensor>.raw`` (N counts the input list's samples from 0), float32
unless ``native_outputs``.  A tensor name is made a file name by replacing every character other than
letters, digits, ``.``, ``_`` and ``-`` (so ``/`` and ``:`` too) by ``_``; two names that would clash get
``_2``, ``_3``... in output order.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from opendlc import container as dlc
from opendlc.atomic import write_bytes_atomic
from opendlc.errors import OpendlcError, UsageError
from opendlc.input_list import (
    InputList,
    InputSpec,
    input_specs,
    load_sample,
    read_input_list,
    resolve_outputs,
)
from opendlc.progress import track

log = logging.getLogger("opendlc.netrun")

RUNTIMES = ("cpu", "htp")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class NetRunResult:
    output_dir: Path
    samples: int
    outputs: list[str]
    files: dict[str, str] = field(default_factory=dict)  # tensor -> file name
    seconds: float = 0.0
    runtime: str = "cpu"
    record: str | None = None


def file_names(tensors: list[str]) -> dict[str, str]:
    """Tensor name -> file-safe ``.raw`` file name (unsafe characters become ``_``, clashes numbered)."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for t in tensors:
        base = _UNSAFE.sub("_", t).strip(".") or "_"
        name, i = base, 2
        while name.lower() in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name.lower())
        out[t] = f"{name}.raw"
    return out


def _requested_outputs(lst: InputList, extra: list[str], model) -> list[str]:
    return resolve_outputs(model, lst.output_layers, [*lst.output_tensors, *extra])


def net_run(
    container_path: str | Path,
    input_list: str | Path,
    output_dir: str | Path = "output",
    *,
    runtime: str = "cpu",
    soc: str | None = None,
    output_tensors: list[str] | None = None,
    native_inputs: bool = False,
    native_outputs: bool = False,
    progress: bool = True,
) -> NetRunResult:
    """Run every sample of ``input_list`` and write ``Result_N`` folders into ``output_dir``."""
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime}: choose {' or '.join(RUNTIMES)}")
    if soc is not None and runtime != "htp":
        raise UsageError("--soc applies to --runtime htp")
    container = dlc.load(container_path)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"{output_dir}: exists and is not a folder")
    start = time.monotonic()
    if runtime == "cpu":
        names, files, run_one, n, label = _cpu(container, input_list, output_tensors or [], native_inputs)
        record = None
    else:
        names, files, run_one, n, label, record = _htp(
            container, input_list, output_tensors or [], soc, native_inputs, native_outputs
        )
    changed = [f"{t} -> {f}" for t, f in files.items() if f != f"{t}.raw"]
    if changed:
        log.info("output file names: %s", "; ".join(changed))
    output_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for i, values in enumerate(track(run_one(), f"net-run {label}", total=n, enabled=progress)):
        folder = output_dir / f"Result_{i}"
        folder.mkdir(exist_ok=True)
        for t in names:
            a = values[t]
            if not native_outputs and a.dtype != np.float32:
                a = a.astype(np.float32)
            write_bytes_atomic(folder / files[t], np.ascontiguousarray(a).tobytes())
        count += 1
    return NetRunResult(output_dir, count, names, files, time.monotonic() - start, runtime, record)


def _cpu(container: dlc.Container, list_path, extra: list[str], native: bool):
    import onnxruntime as ort

    from opendlc.htp.qdq import expose_outputs, has_qdq, qdq_model_for

    quantized = container.quantized or has_qdq(container.model)
    model = qdq_model_for(container) if quantized else container.model
    specs = input_specs(model)
    lst = read_input_list(list_path, specs)
    requested = _requested_outputs(lst, extra, model)
    if requested:
        model = expose_outputs(model, requested)
    names = requested or [o.name for o in model.graph.output]
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OpendlcError(f"onnxruntime cannot load the model: {str(e).strip().splitlines()[0]}") from None

    def run_one():
        for sample in lst.samples:
            feeds = load_sample(sample, specs, native=native)
            yield dict(zip(names, session.run(names, feeds), strict=True))

    label = "cpu (quantized simulation)" if quantized else "cpu (float)"
    return names, file_names(names), run_one, len(lst), label


def _htp(container: dlc.Container, list_path, extra: list[str], soc, native_in: bool, native_out: bool):
    from opendlc.htp import DEFAULT_SOC, run_record
    from opendlc.htp.qdq import has_qdq, qdq_model_for

    runner = run_record(container, soc=soc or DEFAULT_SOC)
    specs: list[InputSpec] = runner.input_specs(native=native_in)
    lst = read_input_list(list_path, specs)
    layers_or_tensors = [*lst.output_layers, *lst.output_tensors, *extra]
    names = runner.output_names
    if layers_or_tensors:
        model = (
            qdq_model_for(container) if container.quantized or has_qdq(container.model) else container.model
        )
        requested = _requested_outputs(lst, extra, model)
        missing = [t for t in requested if t not in names]
        if missing:
            raise UsageError(
                f"record {runner.record.id} has no output {', '.join(missing)} "
                f"(its outputs: {', '.join(names)}); "
                f"prepare it with --set_output_tensors {','.join(missing)}"
            )
        names = requested

    def run_one():
        for sample in lst.samples:
            # load_sample reads the file types the specs say (float32 or the buffers' own)
            feeds = load_sample(sample, specs, native=True)
            yield runner.run(feeds, native_inputs=native_in, native_outputs=native_out)

    label = f"htp emulator ({runner.record.id})"
    return names, file_names(names), run_one, len(lst), label, runner.record.id
