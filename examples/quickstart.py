"""The quickstart: opendlc's main job on the bundled digits example, one step at a time.

    python examples/quickstart.py [--workdir DIR]

Each step runs the ``opendlc`` command line as you would, so what it prints is what you would see:

1. ``opendlc convert``: the ONNX model into an opendlc container (``digits.dlc``);
2. ``opendlc info``: what the container holds;
3. the FP32 held-out accuracy of the container's model with ONNX Runtime.

Later steps (quantize, prepare for HTP, run on the HTP emulator) are added to ``STEPS`` as opendlc
grows; every step adds its rows to the accuracy table printed at the end.  Needs only ``pip install .``
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
        ["model", "run on", "samples", "top-1 accuracy", "ms / inference"],
        run.rows,
    )
    print(f"quickstart: done in {time.perf_counter() - started:.1f} s; outputs in {args.workdir}/")


if __name__ == "__main__":
    main()
