"""Helpers of the UDO tests: configs, generating, filling in kernel bodies, building with make."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from opendlc.udo_gen.generate import generate_packages
from opendlc.udo_gen.host_ops import prepare_session


def sdk_style_config(name: str = "SoftmaxUdoPackage") -> dict[str, Any]:
    """A config in the shape of the SDK's documented examples: every core type, per-core data types."""
    return {
        "UdoPackage_0": {
            "Operators": [
                {
                    "type": "Softmax",
                    "inputs": [
                        {
                            "name": "Placeholder",
                            "per_core_data_types": {"CPU": "FLOAT_32", "GPU": "FLOAT_32", "DSP": "UINT_8"},
                            "quantization_mode": "TF",
                        }
                    ],
                    "outputs": [
                        {
                            "name": "Output",
                            "per_core_data_types": {"CPU": "FLOAT_32", "GPU": "FLOAT_32", "DSP": "UINT_8"},
                            "quantization_mode": "TF",
                        }
                    ],
                    "scalar_params": [{"name": "axis", "data_type": "INT_32", "default_value": -1}],
                    "tensor_params": [{"name": "weights", "data_type": "FLOAT_32", "tensor_layout": "NHWC"}],
                    "core_types": ["CPU", "GPU", "DSP"],
                    "dsp_arch_types": ["v68", "v73"],
                }
            ],
            "UDO_PACKAGE_NAME": name,
        }
    }


def write_config(folder: Path, config: dict[str, Any], name: str = "udo.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def generate(tmp_path: Path, config: dict[str, Any], **kwargs) -> Path:
    """Generate the (single) package of ``config`` under tmp_path/out; return its root."""
    (pkg,) = generate_packages(write_config(tmp_path, config), tmp_path / "out", **kwargs)
    return pkg.root


def fill_body(root: Path, op_type: str, body: str, *, core_dir: str = "CPU", includes: str = "") -> Path:
    """Replace the TODO compute body of ``op_type`` with ``body`` (C++), as a user would."""
    path = root / "jni" / "src" / core_dir / f"{op_type}.cpp"
    text = path.read_text()
    pattern = re.compile(
        rf"  // TODO\(opendlc-udo\) BEGIN compute body of {op_type}\n.*?"
        rf"  // TODO\(opendlc-udo\) END compute body of {op_type}\n",
        re.S,
    )
    new, n = pattern.subn(lambda _: body.rstrip("\n") + "\n", text)
    assert n == 1, f"no compute body of {op_type} in {path}"
    path.write_text(includes + new)
    return path


def replace_function(path: Path, function: str, body: str) -> None:
    """Replace the body of C++ function ``function`` in ``path`` (up to its closing brace at column 0)."""
    text = path.read_text()
    pattern = re.compile(rf"(int32_t {function}\(.*?\{{\n).*?(^\}}\n)", re.S | re.M)
    new, n = pattern.subn(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)
    assert n == 1, f"no function {function} in {path}"
    path.write_text(new)


def make(root: Path, *targets: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["make", "-j2", "-C", str(root), *targets],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, f"make {' '.join(targets)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def session(model: onnx.ModelProto, packages: list[str]) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 4  # the guard node's failure is the test's business, not the log's
    prepared = prepare_session(model, packages, so)
    return ort.InferenceSession(prepared.SerializeToString(), so, providers=["CPUExecutionProvider"])


def scaled_softmax(x: np.ndarray, scale: float) -> np.ndarray:
    v = scale * x.astype(np.float64)
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
