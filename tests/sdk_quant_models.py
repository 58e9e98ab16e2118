"""Tiny models, raw inputs and input lists for the quantizer command tests, and a way to run the commands."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from opendlc import container as dlc
from opendlc.cli import app as cli_app
from opendlc.cli import sdk_quant

SNPE = ("snpe-dlc-quant", "snpe-dlc-quantize")
QAIRT = ("qairt-quantizer", "opendlc quantize")
ALL = SNPE + QAIRT


def _t(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a), name)


def conv_model(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(w1,b1) c1 -> Relu r1 -> Conv(w2,b2) c2 -> Sigmoid s -> Flatten f
    -> MatMul(wm) mm -> Gemm(wg,bg, transB) y[1,10].

    Output channel 0 of ``w2`` is tiny and its bias large, so 32-bit biases do not fit that channel's
    product of scales unless ``--adjust_bias_encoding`` widens it.
    """
    rng = np.random.default_rng(seed)
    w2 = (rng.normal(size=(6, 4, 3, 3)) * 0.3).astype(np.float32)
    w2[0] *= 1e-6
    b2 = (rng.normal(size=6) * 0.1).astype(np.float32)
    b2[0] = 1000.0
    inits = [
        _t("w1", (rng.normal(size=(4, 3, 3, 3)) * 0.5).astype(np.float32)),
        _t("b1", (rng.normal(size=4) * 0.1).astype(np.float32)),
        _t("w2", w2),
        _t("b2", b2),
        _t("wm", (rng.normal(size=(384, 16)) * 0.05).astype(np.float32)),
        _t("wg", (rng.normal(size=(10, 16)) * 0.3).astype(np.float32)),
        _t("bg", (rng.normal(size=10) * 0.1).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c2"], ["s"], name="sigmoid"),
        helper.make_node("Flatten", ["s"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "wm"], ["mm"], name="matmul"),
        helper.make_node("Gemm", ["mm", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "tiny_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    m.doc_string = "a tiny model for the quantizer command tests"
    onnx.checker.check_model(m)
    return m


def two_input_model() -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv c; y = c + z, z[1,4,8,8]."""
    rng = np.random.default_rng(5)
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["c", "z"], ["y"], name="add"),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [_t("w", (rng.normal(size=(4, 3, 3, 3)) * 0.5).astype(np.float32))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def uint8_model() -> onnx.ModelProto:
    """u[1,3,8,8] uint8 -> Cast to float uf -> Conv -> y."""
    rng = np.random.default_rng(6)
    g = helper.make_graph(
        [
            helper.make_node("Cast", ["u"], ["uf"], name="cast", to=TensorProto.FLOAT),
            helper.make_node("Conv", ["uf", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        ],
        "uint8_input",
        [helper.make_tensor_value_info("u", TensorProto.UINT8, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [_t("w", (rng.normal(size=(4, 3, 3, 3)) * 0.05).astype(np.float32))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def conv_samples(n: int = 8) -> list[np.ndarray]:
    """Inputs of :func:`conv_model`; the last one has a few outliers (percentile ranges ignore them)."""
    rng = np.random.default_rng(11)
    out = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(n)]
    out[-1].flat[:3] = [40.0, -35.0, 30.0]
    return out


@dataclass
class Case:
    """A model written to a folder with its raw inputs and input list."""

    folder: Path
    model: Path
    input_list: Path
    data: dict[str, list[np.ndarray]]


def write_case(
    folder: Path, model: onnx.ModelProto, data: dict[str, list[np.ndarray]], header: str = ""
) -> Case:
    """Save ``model`` and ``data`` (input -> samples) as raw files with an input list of relative paths."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, path)
    (folder / "raw").mkdir(exist_ok=True)
    names = list(data)
    lines = [header] if header else []
    for i in range(len(data[names[0]])):
        files = []
        for name in names:
            f = folder / "raw" / f"{name}_{i}.raw"
            data[name][i].tofile(f)
            files.append((name, f"raw/{f.name}"))
        lines.append(" ".join(f"{n}:={p}" for n, p in files) if len(names) > 1 else files[0][1])
    lst = folder / "inputs.txt"
    lst.write_text("\n".join(lines) + "\n")
    return Case(folder, path, lst, data)


def conv_case(folder: Path) -> Case:
    return write_case(folder, conv_model(), {"x": conv_samples()})


def overrides_file(folder: Path) -> Path:
    """An AIMET 0.6.1 encodings file for two tensors of :func:`conv_model` (r1 and w1)."""
    enc = {
        "version": "0.6.1",
        "activation_encodings": {
            "r1": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "min": -2.0, "max": 6.0}]
        },
        "param_encodings": {
            "w1": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "min": -1.5, "max": 1.5}]
        },
    }
    path = folder / "overrides.json"
    path.write_text(json.dumps(enc))
    return path


# ---- running the commands in this process ------------------------------------------------------
def run_command(prog: str, args: list[str]) -> int:
    """Run a quantizer command as its console script would; return its exit status."""
    if prog == "opendlc quantize":
        try:
            cli_app.main(["quantize", *args])
        except SystemExit as e:
            return int(e.code or 0)
        return 0
    return sdk_quant.main(prog, args)


def io_args(prog: str, model: Path, input_list: Path | None, output: Path | None) -> list[str]:
    """The input/output options in each command's usual spelling (SNPE: --opt=value; qairt: short)."""
    args: list[str] = []
    if prog in SNPE:
        args.append(f"--input_dlc={model}")
        if input_list is not None:
            args.append(f"--input_list={input_list}")
        if output is not None:
            args.append(f"--output_dlc={output}")
    elif prog == "qairt-quantizer":
        args += ["-i", str(model)]
        if input_list is not None:
            args += ["-l", str(input_list)]
        if output is not None:
            args += ["-o", str(output)]
    else:
        args += ["--input_dlc", str(model)]
        if input_list is not None:
            args += ["--input_list", str(input_list)]
        if output is not None:
            args += ["--output_dlc", str(output)]
    return args


def load(path: Path) -> dlc.Container:
    return dlc.load(path)
