"""The analysis report's promise, checked on the PP-OCR models: it names the worst layers, and re-quantizing
with its overrides file raises the output SQNR by the amount it states (within 0.5 dB).

    python bench/analysis_check.py [--models det rec] [--configs default per-channel]
                                   [--calibration 16] [--heldout 4] [--write]

For each model and quantizer configuration, through the installed commands, as a user would run them:
``opendlc quantize`` the float model on the calibration crops; ``opendlc analyze`` the result (sensitivity
and verdict on held-out crops); ``opendlc convert --quantization_overrides`` the float model with the
report's overrides file and ``opendlc quantize`` it again with the same options.  The output SQNR of both
quantized models against FP32 on the held-out crops is measured here, independently of the report, and
the measured gain is compared with the gain the report states.  ``--write`` puts the tables in
docs/benchmarks.md between this script's markers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- analysis-check:begin -->", "<!-- analysis-check:end -->"
TOLERANCE_DB = 0.5
CONFIGS = {
    "default": [],  # the SDK's defaults: W8A8 per-tensor, 8-bit biases, min-max
    "per-channel": ["--use_per_channel_quantization", "--bias_bitwidth", "32"],
}


def opendlc(*args: str | Path) -> float:
    """Run the installed ``opendlc`` with ``args``; return the wall time."""
    exe = shutil.which("opendlc", path=str(Path(sys.executable).parent)) or "opendlc"
    t = time.perf_counter()
    done = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"opendlc {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t


def input_list(folder: Path, files: list[Path], name: str) -> Path:
    path = folder / name
    path.write_text("".join(f"{f}\n" for f in files))
    return path


def output_sqnr(dlc_path: Path, heldout: data.Samples, reference: np.ndarray) -> float:
    from opendlc import container
    from opendlc.quant.export import to_qdq_model

    return data.sqnr_db(reference, data.outputs(to_qdq_model(container.load(dlc_path)), heldout))


def check(name: str, config: str, calibration: int, heldout: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    float_model = data.model_path(name)
    cal = input_list(work, data.raw_files(name, calibration), "calibration.txt")
    held_files = data.raw_files(name, heldout, heldout=True)
    held = input_list(work, held_files, "heldout.txt")
    held_samples = data.Samples(name, held_files)
    reference = data.outputs(float_model, held_samples)
    flags = CONFIGS[config]

    t_quant = opendlc("quantize", "-i", float_model, "-l", cal, "-o", work / "q.dlc", *flags)
    report_html = work / "report.html"
    t_analyze = opendlc("analyze", work / "q.dlc", "-l", cal, "--heldout_list", held, "-o", report_html)
    report = json.loads(report_html.with_suffix(".json").read_text())
    verdict = report["verdict"]
    row = {
        "model": name,
        "config": config,
        "calibration": calibration,
        "heldout": heldout,
        "quantize_s": t_quant,
        "analyze_s": t_analyze,
        "timings": report["summary"]["timings_s"],
        "output_sqnr_db": min(report["summary"]["output_sqnr_db"].values()),
        "only": report["summary"]["output_sqnr_db_with_only"],
        "worst_layers": [(r["tensor"], r["op_type"], r["sqnr_db"]) for r in report["layers"][:3]],
        "worst_sensitivity": [
            (r["kind"], r["tensor"], r["op_type"], r["output_sqnr_db"])
            for r in report["sensitivity"]["rows"][:3]
        ],
        "sensitivity_runs": len(report["sensitivity"]["rows"]),
        "keep": [(k["kind"], k["tensor"], k["promoted_to"]) for k in verdict["keep"]],
        "stated_baseline_db": verdict["baseline_output_sqnr_db"],
        "stated_db": verdict["output_sqnr_db"],
        "stated_gain_db": verdict["gain_db"],
    }
    baseline = output_sqnr(work / "q.dlc", held_samples, reference)
    row["measured_baseline_db"] = baseline
    if verdict["overrides_file"]:
        overrides = report_html.parent / verdict["overrides_file"]
        opendlc(
            "convert", float_model, "--quantization_overrides", overrides, "-o", work / "with_overrides.dlc"
        )
        opendlc("quantize", "-i", work / "with_overrides.dlc", "-l", cal, "-o", work / "q2.dlc", *flags)
        after = output_sqnr(work / "q2.dlc", held_samples, reference)
    else:
        after = baseline
    row["measured_db"] = after
    row["measured_gain_db"] = after - baseline
    row["agrees"] = bool(abs(row["measured_gain_db"] - row["stated_gain_db"]) <= TOLERANCE_DB)
    return row


def _f(v: float | str) -> str:
    return v if isinstance(v, str) else f"{v:.2f}"


def markdown(rows: list[dict]) -> str:
    out = [
        "| model | config | output SQNR (dB) | only activations / only params quantized (dB) | worst "
        "activations (per-layer SQNR, dB) | most harmful alone (output SQNR, dB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        only = " / ".join(_f(v) for v in r["only"].values())
        worst = "; ".join(f"`{t}` {op} {_f(v)}" for t, op, v in r["worst_layers"])
        sens = "; ".join(f"`{t}` ({k}, {op}) {_f(v)}" for k, t, op, v in r["worst_sensitivity"])
        out.append(
            f"| {r['model']} | {r['config']} | {_f(r['output_sqnr_db'])} | {only} | {worst} | {sens} |"
        )
    out += [
        "",
        "| model | config | verdict: keep | stated: baseline -> with overrides (gain) | measured here "
        "after convert + quantize: baseline -> with overrides (gain) | within 0.5 dB | analyze time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        keep = ", ".join(f"`{t}` ({k}) -> {to}" for k, t, to in r["keep"]) or "nothing"
        stated = f"{_f(r['stated_baseline_db'])} -> {_f(r['stated_db'])} ({r['stated_gain_db']:+.2f})"
        measured = f"{_f(r['measured_baseline_db'])} -> {_f(r['measured_db'])} ({r['measured_gain_db']:+.2f})"
        out.append(
            f"| {r['model']} | {r['config']} | {keep} | {stated} | {measured} | "
            f"{'yes' if r['agrees'] else '**no**'} | {r['analyze_s']:.0f} s ({r['sensitivity_runs']} "
            "sensitivity runs) |"
        )
    return "\n".join(out)


def write_doc(text: str, args: argparse.Namespace) -> None:
    section = (
        f"{START}\n_Written by `python bench/analysis_check.py --models {' '.join(args.models)} --configs "
        f"{' '.join(args.configs)} --calibration {args.calibration} --heldout {args.heldout} --write`._\n\n"
        f"{text}\n{END}"
    )
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if START in doc and END in doc:
        before, rest = doc.split(START, 1)
        doc = before + section + rest.split(END, 1)[1]
    else:
        doc = (
            doc.rstrip("\n")
            + "\n\n## Quantization analysis: stated gains reproduced (bench/analysis_check.py)\n\n"
            + section
            + "\n"
        )
    DOC.write_text(doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["det", "rec"], choices=list(data.SHAPES))
    p.add_argument("--configs", nargs="+", default=["default", "per-channel"], choices=list(CONFIGS))
    p.add_argument("--calibration", type=int, default=16)
    p.add_argument("--heldout", type=int, default=4)
    p.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    p.add_argument("--keep", type=Path, help="keep the work folder here (reports, overrides, containers)")
    args = p.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="analysis_check_"))
    rows = []
    for name in args.models:
        for config in args.configs:
            print(f"{name} {config} ...", file=sys.stderr, flush=True)
            rows.append(check(name, config, args.calibration, args.heldout, work / f"{name}_{config}"))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    text = markdown(rows)
    print(text)
    if args.write:
        write_doc(text, args)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if not all(r["agrees"] for r in rows):
        sys.exit("a stated gain was not reproduced within 0.5 dB")


if __name__ == "__main__":
    main()
