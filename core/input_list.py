"""Input lists, as snpe-net-run and the quantizers read them.

::

    #layer_a layer_b            optional: layers whose outputs are wanted too
    %tensor_x tensor_y          optional: tensors wanted as outputs (after the # line)
    /abs/path/sample0.raw       one input: a path per line
    image:=img1.raw mask:=m1.raw  several inputs: name:=path pairs (or paths in input order)

Blank lines are skipped; relative paths are relative to the list file's folder.  Raw files hold float32
values by default, or the model's native element type with ``native=True``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from opendlc.errors import UsageError
from opendlc.model_edit import graph_inputs


@dataclass(frozen=True)
class InputSpec:
    """A graph input with a static shape."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


@dataclass
class InputList:
    path: Path
    output_layers: list[str] = field(default_factory=list)
    output_tensors: list[str] = field(default_factory=list)
    samples: list[dict[str, Path]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's inputs; a dynamic dimension is an error saying how to pin it."""
    specs = []
    for v in graph_inputs(model):
        t = v.type.tensor_type
        dims = []
        for d in t.shape.dim:
            if not d.HasField("dim_value") or d.dim_value <= 0:
                raise UsageError(
                    f"input '{v.name}' has a dynamic shape; pin it with "
                    f"'opendlc convert --input_dim \"{v.name} 1,3,224,224\"' (your dimensions)"
                )
            dims.append(d.dim_value)
        specs.append(
            InputSpec(v.name, tuple(dims), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)))
        )
    return specs


def read_input_list(path: str | Path, specs: list[InputSpec], *, check_files: bool = True) -> InputList:
    """Parse and check an input list against the model's inputs (files exist, names are known)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such input list") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read the input list ({e})") from None
    result = InputList(path)
    names = [s.name for s in specs]
    header = True
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if header and line.startswith("#"):
            layers, _, tensors = line[1:].partition("%")
            result.output_layers += layers.split()
            result.output_tensors += tensors.split()
            continue
        if header and line.startswith("%"):
            result.output_tensors += line[1:].split()
            continue
        header = False
        result.samples.append(_parse_sample(line, names, path, lineno, check_files))
    if not result.samples and check_files:
        raise UsageError(f"{path}: the input list names no input files")
    return result


def _parse_sample(line: str, names: list[str], path: Path, lineno: int, check: bool) -> dict[str, Path]:
    where = f"{path}:{lineno}"
    tokens = line.split()
    if all(":=" in t for t in tokens):
        sample = {}
        for t in tokens:
            name, _, file = t.partition(":=")
            if name not in names:
                raise UsageError(f"{where}: the model has no input '{name}' (inputs: {', '.join(names)})")
            sample[name] = _resolve(file, path, where, check)
        missing = [n for n in names if n not in sample]
        if missing:
            raise UsageError(f"{where}: no file for input(s) {', '.join(missing)}")
        return sample
    if any(":=" in t for t in tokens):
        raise UsageError(f"{where}: mixes name:=path pairs and plain paths")
    if len(tokens) != len(names):
        raise UsageError(
            f"{where}: {len(tokens)} file(s) for {len(names)} input(s) ({', '.join(names)}); "
            "use name:=path pairs"
        )
    return {n: _resolve(t, path, where, check) for n, t in zip(names, tokens, strict=True)}


def _resolve(file: str, list_path: Path, where: str, check: bool) -> Path:
    p = Path(file)
    if not p.is_absolute():
        beside = list_path.parent / p
        p = beside if beside.exists() or not p.exists() else p
    if check and not p.is_file():
        raise UsageError(f"{where}: input file {p} does not exist")
    return p


def load_sample(
    sample: dict[str, Path], specs: list[InputSpec], *, native: bool = False
) -> dict[str, np.ndarray]:
    """Read one line's raw files as the model's inputs (float32 files unless ``native``)."""
    out = {}
    for spec in specs:
        file = sample[spec.name]
        dtype = check_file_size(file, spec, native=native)
        out[spec.name] = np.fromfile(file, dtype=dtype).reshape(spec.shape).astype(spec.dtype, copy=False)
    return out


def check_file_size(file: Path, spec: InputSpec, *, native: bool = False) -> np.dtype:
    """Check that ``file`` holds exactly one ``spec`` input; return the element type it is read as."""
    dtype = spec.dtype if native else np.dtype(np.float32)
    expected = int(np.prod(spec.shape)) * dtype.itemsize
    try:
        size = file.stat().st_size
    except OSError:
        raise UsageError(f"{file}: input file does not exist") from None
    if size != expected:
        raise UsageError(
            f"{file}: wrong size for input '{spec.name}' {list(spec.shape)} {dtype.name}: "
            f"expected {expected} bytes, found {size}"
        )
    return dtype


def iter_samples(
    lst: InputList, specs: list[InputSpec], *, native: bool = False
) -> Iterator[dict[str, np.ndarray]]:
    """The samples, read lazily one at a time (memory does not grow with the list)."""
    for sample in lst.samples:
        yield load_sample(sample, specs, native=native)


def resolve_outputs(model: onnx.ModelProto, layers: list[str], tensors: list[str]) -> list[str]:
    """Tensor names for ``#layer`` (a node's outputs) and ``%tensor`` requests, checked against the graph."""
    by_node = {n.name: list(n.output) for n in model.graph.node if n.name}
    known = {o for n in model.graph.node for o in n.output} | {v.name for v in model.graph.input}
    out: list[str] = []
    for layer in layers:
        if layer not in by_node:
            if layer in known:  # SNPE layer names are often the output tensor names
                out.append(layer)
                continue
            raise UsageError(f"the model has no layer '{layer}'")
        out += by_node[layer]
    for t in tensors:
        if t not in known:
            raise UsageError(f"the model has no tensor '{t}'")
        out.append(t)
    return list(dict.fromkeys(out))


def write_raw(path: Path, array: np.ndarray, *, native: bool = False) -> None:
    """Write an output as snpe-net-run does: float32 unless ``native``."""
    data = np.ascontiguousarray(array if native else np.asarray(array, dtype=np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    data.tofile(path)
