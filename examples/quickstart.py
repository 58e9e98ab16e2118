"""The quickstart: opendlc's main job on the bundled digits example, one step at a time.

    python examples/quickstart.py [--workdir DIR]

Each step runs the ``opendlc`` command line as you would, so what it prints is what you would see:

1. ``opendlc convert``: the ONNX model into an opendlc container (``digits.dlc``);
2. ``opendlc info``: what the container holds;
3. the FP32 held-out accuracy of the container's model with ONNX Runtime;
4. ``opendlc quantize``: W8A8 (per-channel weights, 32-bit biases) calibrated on the calibration list;
5. ``opendlc graph-prepare``: an HTP offline cache for sm8650, stored in the container;
6. ``opendlc net-run --runtime cpu``: the quantized model simulated on the CPU, on the held-out list;
7. ``opendlc net-run --runtime htp``: the prepared cache run on Qualcomm's HTP emulator.

Every step adds its rows to the accuracy table printed at the end.  Needs only ``pip install .``
(no download: the model and its data are committed under ``examples/digits/``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parent / "digits"
# train.py reports 98.3 % for the float model; far below that means something is broken.
MIN_FP32_ACCURACY = 0.90


@dataclass
class Run:
    """What the steps share: where things are, and the accuracy rows gathered so far."""

    example: Path
    workdir: Path
    opendlc: str
    rows: list[tuple[str, str, int, str, str]] = field(default_factory=list)

    @property
    def dlc(self) -> Path:
        return self.workdir / "digits.dlc"

    @property
    def quantized(self) -> Path:
        return self.workdir / "digits_quantized.dlc"

    @property
    def cached(self) -> Path:
        return self.workdir / "digits_cached.dlc"

    def cli(self, *args: str) -> None:
        """Run an ``opendlc`` command, showing it; stop the quickstart if it fails."""
        shown = " ".join(["opendlc", *args])
        print(f"$ {shown}", flush=True)
        done = subprocess.run([self.opendlc, *args])
        if done.returncode != 0:
            raise SystemExit(f"quickstart: '{shown}' failed with exit status {done.returncode}")


def step_convert(run: Run) -> None:
    run.cli("convert", str(run.example / "model.onnx"), "-o", str(run.dlc))


def step_info(run: Run) -> None:
    run.cli("info", str(run.dlc))


def step_fp32_accuracy(run: Run) -> None:
    import onnxruntime as ort

    from opendlc import container

    model = container.load(run.dlc).model
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    accuracy, count, ms = evaluate(lambda feed: session.run(None, feed)[0], run.example, model)
    run.rows.append(("FP32", "ONNX Runtime, CPU", count, f"{accuracy:.2%}", f"{ms:.3f}"))
    if accuracy < MIN_FP32_ACCURACY:
        raise SystemExit(f"quickstart: FP32 accuracy {accuracy:.2%} is far below the trained model's")


def step_quantize(run: Run) -> None:
    run.cli(
        "quantize",
        "--input_dlc",
        str(run.dlc),
        "--input_list",
        str(run.example / "calibration.txt"),
        "--output_dlc",
        str(run.quantized),
        "--use_per_channel_quantization",
        "--bias_bitwidth",
        "32",
    )


def step_prepare(run: Run) -> None:
    run.cli(
        "graph-prepare",
        "--input_dlc",
        str(run.quantized),
        "--output_dlc",
        str(run.cached),
        "--htp_socs",
        "sm8650",
    )
    run.cli("info", str(run.cached))


def _net_run_accuracy(run: Run, runtime: str, title: str, where: str) -> None:
    """Run the held-out list through ``opendlc net-run`` and score its Result_N outputs."""
    from opendlc import container

    out_dir = run.workdir / f"net-run-{runtime}"
    shutil.rmtree(out_dir, ignore_errors=True)
    args = [
        "net-run",
        "--container",
        str(run.cached),
        "--input_list",
        str(run.example / "heldout.txt"),
        "--output_dir",
        str(out_dir),
        "--runtime",
        runtime,
    ]
    if runtime == "htp":
        args += ["--soc", "sm8650"]
    start = time.perf_counter()
    run.cli(*args)
    elapsed = time.perf_counter() - start
    model = container.load(run.cached).model
    output = model.graph.output[0].name
    labels = [int(v) for v in (run.example / "heldout_labels.txt").read_text().split()]
    correct = 0
    for i, label in enumerate(labels):
        files = list((out_dir / f"Result_{i}").glob("*.raw"))
        match = [f for f in files if f.stem == output.replace("/", "_").replace(":", "_")] or files
        logits = np.fromfile(match[0], dtype=np.float32)
        correct += int(np.argmax(logits) == label)
    accuracy = correct / len(labels)
    run.rows.append((title, where, len(labels), f"{accuracy:.2%}", f"{1000 * elapsed / len(labels):.3f}"))


def step_cpu_simulation(run: Run) -> None:
    _net_run_accuracy(run, "cpu", "W8A8 (quantized)", "CPU simulation (QDQ, ONNX Runtime)")


def step_htp_emulator(run: Run) -> None:
    _net_run_accuracy(run, "htp", "W8A8 (quantized)", "HTP emulator, sm8650 cache")


def evaluate(
    infer: Callable[[dict[str, np.ndarray]], np.ndarray], example: Path, model
) -> tuple[float, int, float]:
    """(top-1 accuracy, samples, milliseconds per inference) of ``infer`` on the held-out inputs."""
    from opendlc.input_list import input_specs, iter_samples, read_input_list

    specs = input_specs(model)
    inputs = read_input_list(example / "heldout.txt", specs)
    labels = [int(v) for v in (example / "heldout_labels.txt").read_text().split()]
    if len(labels) != len(inputs):
        raise SystemExit(f"quickstart: {len(inputs)} held-out inputs but {len(labels)} labels")
    correct, elapsed = 0, 0.0
    for feed, label in zip(iter_samples(inputs, specs), labels, strict=True):
        start = time.perf_counter()
        logits = infer(feed)
        elapsed += time.perf_counter() - start
        correct += int(np.argmax(logits) == label)
    return correct / len(labels), len(labels), 1000 * elapsed / len(labels)


STEPS: list[tuple[str, Callable[[Run], None]]] = [
    ("convert the ONNX model into an opendlc container", step_convert),
    ("show what the container holds", step_info),
    ("FP32 held-out accuracy with ONNX Runtime", step_fp32_accuracy),
    ("quantize: W8A8, per-channel weights, 32-bit biases", step_quantize),
    ("prepare an HTP offline cache for sm8650", step_prepare),
    ("held-out accuracy of the quantized model, simulated on the CPU", step_cpu_simulation),
    ("held-out accuracy of the HTP cache on Qualcomm's HTP emulator", step_htp_emulator),
]


def find_opendlc() -> str:
    """The ``opendlc`` console script beside this Python (a venv's bin/), else on PATH."""
    beside = shutil.which("opendlc", path=str(Path(sys.executable).parent))
    found = beside or shutil.which("opendlc")
    if found is None:
        raise SystemExit("quickstart: the 'opendlc' command is not installed (run 'pip install .' first)")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description="Run opendlc's main job on the bundled digits example.")
    parser.add_argument(
        "--workdir", type=Path, default=Path("quickstart-output"), help="where outputs go (created)"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    run = Run(EXAMPLE, args.workdir, find_opendlc())
    started = time.perf_counter()
    for number, (title, step) in enumerate(STEPS, 1):
        print(f"\n== step {number}/{len(STEPS)}: {title}", flush=True)
        step(run)

    from opendlc.tables import print_table

    print()
    print_table(
        "Held-out accuracy (digits, 10 classes)",
        ["model", "run on", "samples", "top-1 accuracy", "ms / inference (net-run: whole command)"],
        run.rows,
    )
    print(f"quickstart: done in {time.perf_counter() - started:.1f} s; outputs in {args.workdir}/")


if __name__ == "__main__":
    main()
