"""The documented invocations run as written: docs/quantization.md's section "Command line and Python API"
and the example forms in the SDK's own text of the three quantizers, on the bundled digits example."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import REPO, run

from opendlc import container as dlc
from opendlc.encodings import EncodingSet

DOC = REPO / "docs" / "quantization.md"


def _section() -> str:
    text = DOC.read_text()
    start = text.index("## Command line and Python API")
    end = text.find("\n## ", start + 10)
    return text[start : end if end > 0 else None]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _section(), flags=re.S)


@pytest.fixture
def digits(tmp_path) -> Path:
    """A copy of the bundled example, so outputs land in a temporary folder."""
    folder = tmp_path / "digits"
    shutil.copytree(REPO / "examples" / "digits", folder, ignore=shutil.ignore_patterns("heldout*"))
    return folder


def _commands() -> list[str]:
    return [ln for block in _blocks("sh") for ln in block.splitlines() if ln.strip()]


def test_the_section_has_examples():
    assert len(_commands()) >= 5 and len(_blocks("python")) >= 2 and _blocks("yaml")


def _outputs_of(argv: list[str], folder: Path) -> list[Path]:
    for i, a in enumerate(argv):
        if a.startswith("--output_dlc="):
            return [folder / a.split("=", 1)[1]]
        if a in ("-o", "--output_dlc"):
            return [folder / argv[i + 1]]
    return [folder / "model_quantized.dlc"]


@pytest.mark.parametrize("line", _commands())
def test_documented_command_runs_as_written(line, digits):
    argv = shlex.split(line)
    r = run(*argv[1:], prog=argv[0], cwd=digits) if argv[0] != "opendlc" else run(*argv[1:], cwd=digits)
    assert r.returncode == 0, r.stderr
    # the runner's error lines and tracebacks (log lines may mention a rounding error)
    assert ": error:" not in r.stderr and "Traceback" not in r.stderr
    for out in _outputs_of(argv, digits):
        c = dlc.load(out)
        assert c.quantized and len(c.encodings) > 0
    if "--dump_encoding_json" in argv:
        out = _outputs_of(argv, digits)[0]
        EncodingSet.from_aimet(
            __import__("json").loads(out.with_name(f"{out.stem}_encoding.json").read_text())
        )


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_documented_python_runs_as_written(index, digits):
    code = _blocks("python")[index]
    r = subprocess.run([sys.executable, "-c", code], cwd=digits, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    written = [p for p in digits.glob("digits_*.dlc")]
    assert written and all(dlc.load(p).quantized for p in written)


def test_documented_config_runs(digits):
    (digits / "quant.yaml").write_text(_blocks("yaml")[0])
    r = run("-i", "model.onnx", "-c", "quant.yaml", "-o", "cfg.dlc", prog="qairt-quantizer", cwd=digits)
    assert r.returncode == 0, r.stderr
    enc = dlc.load(digits / "cfg.dlc").encodings
    assert enc.meta["quantizer"]["apply_algorithms"] == ["cle"]
    assert {t.bitwidth for t in enc.of_kind("activation") if t.dtype == "int"} == {16}


# The example forms the SDK's text gives for these commands, on the digits model (input image, output logits).
SDK_EXAMPLES = [
    ("snpe-dlc-quant", ["--optimizations", "cle", "--optimizations", "cle"]),
    ("snpe-dlc-quant", ["--algorithms", "cle"]),
    ("snpe-dlc-quant", ["--param_quantizer", "symmetric", "--restrict_quantization_steps", "-0x80,0x7F"]),
    (
        "snpe-dlc-quantize",
        [
            "--weights_bitwidth",
            "16",
            "--param_quantizer",
            "symmetric",
            "--restrict_quantization_steps",
            "-0x8000,0x7F7F",
        ],
    ),
    ("qairt-quantizer", ["--apply_algorithms", "cle"]),
    ("qairt-quantizer", ["--preserve_io_datatype", "image", "logits"]),
    ("qairt-quantizer", ["--preserve_io_datatype"]),
    (
        "qairt-quantizer",
        ["--param_quantizer_schema", "symmetric", "--restrict_quantization_steps", "-0x80 0x7F"],
    ),
    (
        "qairt-quantizer",
        ["--weights_bitwidth", "16", "--param_quantizer_schema", "symmetric"]
        + ["--restrict_quantization_steps", "-0x8000 0x7F7F"],
    ),
]


@pytest.mark.parametrize("prog,args", SDK_EXAMPLES, ids=[f"{p} {' '.join(a)}" for p, a in SDK_EXAMPLES])
def test_sdk_example_forms_run(prog, args, digits):
    r = run("--input_dlc", "model.onnx", "--input_list", "calibration.txt", *args, prog=prog, cwd=digits)
    assert r.returncode == 0, r.stderr
    enc = dlc.load(digits / "model_quantized.dlc").encodings
    if "--restrict_quantization_steps" in args:
        lo, hi = (int(v, 16) for v in re.split(r"[, ]", args[-1]))
        e = enc["conv1.weight"].encodings[0]
        assert (round(e.min / e.scale), round(e.max / e.scale)) == (lo, hi)
    if "--preserve_io_datatype" in args:
        assert enc.meta["preserve_io_datatype"] == args[args.index("--preserve_io_datatype") + 1 :]
