"""The README's two commands, CI's script, the quickstart and the bundled example."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import numpy as np
import onnx
import pytest
from clirun import DIGITS, REPO

README = (REPO / "README.md").read_text()
CI = (REPO / ".ci" / "run").read_text()


def _first_commands() -> list[str]:
    """The shell code blocks that open the README, before its first section heading."""
    opening = README.split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```(?:sh|bash|shell)?\n(.*?)```", opening, flags=re.S)]


def test_readme_opens_with_exactly_two_commands():
    commands = _first_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands), "each command is one line"


def test_first_command_installs_plainly_and_runs_the_quickstart():
    install_and_run = _first_commands()[0]
    words = shlex.split(install_and_run)
    assert "venv" in words
    assert "install" in words and "." in words  # `pip install .` ...
    assert "-e" not in words and "--editable" not in words  # ... not an editable install
    quickstart = next(w for w in words if w.endswith("quickstart.py"))
    assert (REPO / quickstart).is_file()


def test_second_command_installs_the_test_extra_and_runs_every_test():
    test_command = _first_commands()[1]
    words = shlex.split(test_command)
    assert "venv" in words and ".[test]" in words
    assert words[-3:][1:] == ["pytest"] or words[-2:] == ["-m", "pytest"]  # the whole suite: no selection
    assert test_command.endswith("-m pytest")


def test_ci_runs_the_readme_test_command_verbatim():
    lines = [ln.strip() for ln in CI.splitlines()]
    assert lines[0] in ("#!/usr/bin/env bash", "#!/bin/bash")
    code = [ln for ln in lines[1:] if ln and not ln.startswith("#")]
    # nothing weaker: strict mode, a change to the repository root, system packages the tests need
    # (Debian's chromium for the analysis report's browser test), then the README's command as written
    assert code[:2] == ["set -euo pipefail", 'cd "$(dirname "$0")/.."']
    assert code[-1] == _first_commands()[1]
    assert all(ln.startswith("command -v chromium") and "apt-get install" in ln for ln in code[2:-1])


def test_quickstart_quantizes_prepares_runs_on_htp_and_reports_accuracy(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py"), "--workdir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "$ opendlc convert" in done.stdout and "$ opendlc info" in done.stdout
    row = next(line for line in done.stdout.splitlines() if "FP32" in line and "%" in line)
    accuracy = float(re.search(r"(\d+\.\d+)%", row).group(1))
    assert accuracy > 90.0
    assert (tmp_path / "out" / "digits.dlc").is_file()
    for command in ("quantize", "graph-prepare", "net-run"):
        assert f"$ opendlc {command}" in done.stdout
    quantized = {
        where: float(re.search(r"(\d+\.\d+)%", line).group(1))
        for line in done.stdout.splitlines()
        if "W8A8" in line and "%" in line
        for where in ("CPU simulation", "HTP emulator")
        if where in line
    }
    assert set(quantized) == {"CPU simulation", "HTP emulator"}
    assert all(a > accuracy - 2.0 for a in quantized.values())  # W8A8 keeps the float accuracy
    assert (tmp_path / "out" / "digits_cached.dlc").is_file()


# ---- the bundled example -----------------------------------------------------------------------------
def _list(name: str) -> list[str]:
    return (DIGITS / name).read_text().split()


def test_example_files_are_what_the_readme_says():
    model = onnx.load(DIGITS / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,) = model.graph.input
    assert inp.name == "image"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 1, 8, 8]
    calibration, heldout = _list("calibration.txt"), _list("heldout.txt")
    labels = [int(v) for v in _list("heldout_labels.txt")]
    assert len(calibration) == 100 and len(heldout) == len(labels) == 360
    assert set(labels) == set(range(10))
    for rel in calibration + heldout:
        raw = DIGITS / rel  # paths are relative to the list file
        assert raw.stat().st_size == 64 * 4
        values = np.fromfile(raw, dtype="<f4")
        assert values.min() >= 0.0 and values.max() <= 1.0
    total = sum(p.stat().st_size for p in DIGITS.rglob("*") if p.is_file())
    assert total < 400_000  # a few hundred KB at most


@pytest.mark.slow
def test_train_script_reproduces_the_committed_example(tmp_path):
    pytest.importorskip("sklearn")
    done = subprocess.run(
        [sys.executable, str(DIGITS / "train.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "held-out accuracy (numpy): 0.9" in done.stdout
    for name in ("calibration.txt", "heldout.txt", "heldout_labels.txt"):
        assert (tmp_path / name).read_text() == (DIGITS / name).read_text()
    for rel in _list("calibration.txt") + _list("heldout.txt"):
        assert (tmp_path / rel).read_bytes() == (DIGITS / rel).read_bytes()
    # weights may differ in the last bits across BLAS builds, not more
    ours, committed = onnx.load(tmp_path / "model.onnx"), onnx.load(DIGITS / "model.onnx")
    for a, b in zip(ours.graph.initializer, committed.graph.initializer, strict=True):
        assert a.name == b.name
        np.testing.assert_allclose(
            onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b), rtol=1e-4, atol=1e-5
        )
    assert [n.op_type for n in ours.graph.node] == [n.op_type for n in committed.graph.node]
