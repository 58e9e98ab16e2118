"""Shared benchmark data: the PP-OCR models (pinned to static shapes), calibration and held-out crops
written once as raw files, and the float reference outputs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import realmodels  # noqa: E402

from opendlc.model_edit import set_input_shapes  # noqa: E402

CALIBRATION_SEED = 0
HELDOUT_SEED = 1000


def model(name: str) -> onnx.ModelProto:
    """The PP-OCR model ``name`` with its input pinned to the benchmark shape."""
    return set_input_shapes(
        onnx.load(realmodels.ppocr_model(name)), {"x": list(realmodels.input_shape(name))}
    )


def model_path(name: str) -> Path:
    path = realmodels.cache_dir() / "bench" / f"{name}_static.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model(name), path)
    return path


def raw_files(name: str, count: int, *, heldout: bool = False) -> list[Path]:
    """``count`` inputs of model ``name`` as raw float32 files (written on first use)."""
    kind = "heldout" if heldout else "calibration"
    folder = realmodels.cache_dir() / "bench" / f"{name}_{kind}"
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{i:04d}.raw" for i in range(count)]
    if not all(f.exists() for f in files):
        crops = realmodels.image_crops(
            realmodels.input_shape(name), count, seed=HELDOUT_SEED if heldout else CALIBRATION_SEED
        )
        for f, c in zip(files, crops, strict=True):
            c.astype(np.float32).tofile(f)
    return files


def stream(name: str, files: list[Path]) -> Iterator[dict[str, np.ndarray]]:
    """Read inputs one at a time (what a streaming quantizer sees)."""
    shape = realmodels.input_shape(name)
    for f in files:
        yield {"x": np.fromfile(f, dtype=np.float32).reshape(shape)}


class Samples:
    """A re-iterable, sized, lazily-read sample set."""

    def __init__(self, name: str, files: list[Path]) -> None:
        self.name, self.files = name, files

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return stream(self.name, self.files)


def outputs(model_proto: onnx.ModelProto | str | Path, samples: Samples) -> np.ndarray:
    import onnxruntime as ort

    data = model_proto.SerializeToString() if isinstance(model_proto, onnx.ModelProto) else str(model_proto)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.concatenate([np.asarray(sess.run(None, s)[0], dtype=np.float64).ravel() for s in samples])


sqnr_db = realmodels.sqnr_db
SHAPES = {k: v[1] for k, v in realmodels.MODELS.items()}
