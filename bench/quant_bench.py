"""Quantization benchmark: opendlc side by side with onnxruntime.quantization on the PP-OCR models.

    python bench/quant_bench.py accuracy [--models det rec cls] [--calibration 64] [--heldout 8]
    python bench/quant_bench.py memory   [--models det] [--methods ...]
    python bench/quant_bench.py speed    [--models det rec cls]

``accuracy``: output SQNR against FP32 on held-out crops for W8A8 per-tensor, W8A8 per-channel and W8A16,
for opendlc's configurations and onnxruntime's.  ``memory``: peak RSS of a calibration in a child process
with 16 and 64 samples.  ``speed``: calibration wall time against onnxruntime's and against the plain
float forward passes over the same samples.  Results print as Markdown tables; ``--write`` puts them in
docs/benchmarks.md between markers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"

# opendlc configurations: name -> QuantizerOptions keywords (+ "family" for grouping)
OURS: dict[str, dict] = {
    "SDK default (W8A8, 8-bit bias, min-max)": {"family": "W8A8 per-tensor"},
    "W8A8 bias32 min-max": {"family": "W8A8 per-tensor", "bias_bitwidth": 32},
}
METHODS = ["min-max", "sqnr", "mse", "percentile", "entropy", "enhanced"]
# every method alone; the four main ones also with the algorithms (the grid is cut to what runs in
# reasonable time on two cores: the detector takes ~10-30 s per configuration)
ALGORITHMS = ([], ["cle"], ["bias_correction"], ["cle", "bias_correction"])
for fam, extra in [("W8A8 per-tensor", {}), ("W8A8 per-channel", {"use_per_channel_quantization": True})]:
    for m in METHODS:
        searched = ("min-max", "sqnr", "mse", "percentile") + (("entropy",) if "channel" in fam else ())
        for algs in ALGORITHMS if m in searched else ([],):
            if fam == "W8A8 per-tensor" and algs and algs != ["cle", "bias_correction"]:
                continue
            name = f"{fam.split()[1]} bias32 {m}" + "".join(f" +{a}" for a in algs)
            OURS[name] = {
                "family": fam,
                "bias_bitwidth": 32,
                "act_quantizer_calibration": m,
                **extra,
                **({"apply_algorithms": algs} if algs else {}),
            }
# seq_mse (weight ranges by layer output error; docs/algorithms.md), on the per-channel family
for m in ("min-max", "sqnr", "percentile"):
    for algs in (["seq_mse"], ["cle", "seq_mse"], ["cle", "seq_mse", "bias_correction"]):
        if m == "min-max" and "bias_correction" in algs:
            continue
        OURS[f"per-channel bias32 {m}" + "".join(f" +{a}" for a in algs)] = {
            "family": "W8A8 per-channel",
            "bias_bitwidth": 32,
            "act_quantizer_calibration": m,
            "use_per_channel_quantization": True,
            "apply_algorithms": algs,
        }
# W8A16: with 16-bit activations the 8-bit weights carry most of the error, so the weight algorithms too
for m in ("min-max", "sqnr"):
    for algs in (
        [],
        ["cle"],
        ["bias_correction"],
        ["seq_mse"],
        ["cle", "seq_mse"],
        ["cle", "seq_mse", "bias_correction"],
    ):
        OURS[f"W8A16 per-channel bias32 {m}" + "".join(f" +{a}" for a in algs)] = {
            "family": "W8A16",
            "act_bitwidth": 16,
            "bias_bitwidth": 32,
            "use_per_channel_quantization": True,
            "act_quantizer_calibration": m,
            **({"apply_algorithms": algs} if algs else {}),
        }


def ours(
    model_name: str, config: dict, calibration: data.Samples, *, stages: dict | None = None
) -> tuple[onnx.ModelProto, float]:
    from opendlc.container import Container
    from opendlc.quant.api import quantize
    from opendlc.quant.export import to_qdq_model
    from opendlc.quant.options import QuantizerOptions

    opts = QuantizerOptions(**{k: v for k, v in config.items() if k != "family"})
    t = time.perf_counter()
    q = quantize(Container(data.model(model_name)), calibration, opts, progress=False)
    secs = time.perf_counter() - t
    if stages is not None:
        stages.update(q.encodings.meta.get("seconds", {}))
    return to_qdq_model(q), secs


def ort_quantize(
    model_name: str,
    calibration: data.Samples,
    *,
    method: str = "MinMax",
    per_channel: bool = False,
    act16: bool = False,
    opset17: bool = False,
) -> tuple[Path, float, Path]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tmp = Path(tempfile.mkdtemp(prefix="ortq_"))
    src = data.model_path(model_name)
    if opset17:  # per-channel QDQ needs DequantizeLinear's axis (opset 13); FACTS.md: ORT's best path
        m = onnx.version_converter.convert_version(onnx.load(src), 17)
        onnx.save(m, tmp / "opset17.onnx")
        quant_pre_process(str(tmp / "opset17.onnx"), str(tmp / "pre.onnx"), skip_symbolic_shape=True)
        src = tmp / "pre.onnx"

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration)

        def get_next(self):
            return next(self.it, None)

    out = tmp / "q.onnx"
    t = time.perf_counter()
    quantize_static(
        str(src),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QUInt16 if act16 else QuantType.QUInt8,
        weight_type=QuantType.QInt8 if per_channel else QuantType.QUInt8,
        calibrate_method=getattr(CalibrationMethod, method),
        extra_options={"UseQDQContribOps": act16},
    )
    return out, time.perf_counter() - t, tmp


ORT_CONFIGS = {
    "ORT MinMax per-tensor": ("W8A8 per-tensor", {"method": "MinMax"}),
    "ORT MinMax per-channel (opset 17 + pre-processing)": (
        "W8A8 per-channel",
        {"method": "MinMax", "per_channel": True, "opset17": True},
    ),
    "ORT Percentile per-tensor": ("W8A8 per-tensor", {"method": "Percentile"}),
    "ORT Entropy per-tensor": ("W8A8 per-tensor", {"method": "Entropy"}),
    "ORT MinMax W8A16 per-channel (opset 17)": (
        "W8A16",
        {"method": "MinMax", "per_channel": True, "opset17": True, "act16": True},
    ),
}
# onnxruntime's Percentile and Entropy keep every activation of every sample: on the 480x480 detector they
# exhaust this machine's 24 GiB at 64 samples (FACTS.md section 5), so they are not run there.
ORT_SKIP = {("det", "ORT Percentile per-tensor"), ("det", "ORT Entropy per-tensor")}


def accuracy(models: list[str], n_cal: int, n_held: int, configs: list[str] | None) -> list[dict]:
    rows = []
    for name in models:
        cal = data.Samples(name, data.raw_files(name, n_cal))
        held = data.Samples(name, data.raw_files(name, n_held, heldout=True))
        ref = data.outputs(data.model(name), held)
        for cfg_name, cfg in OURS.items():
            if configs and not any(c in cfg_name for c in configs):
                continue
            try:
                qdq, secs = ours(name, cfg, cal)
                sq = data.sqnr_db(ref, data.outputs(qdq, held))
            except Exception as e:  # a failing configuration is a result too
                print(f"  {name} {cfg_name}: failed: {e}", file=sys.stderr)
                continue
            rows.append(
                {
                    "model": name,
                    "tool": "opendlc",
                    "config": cfg_name,
                    "family": cfg["family"],
                    "sqnr_db": round(sq, 2),
                    "seconds": round(secs, 1),
                }
            )
            print(f"{name:4s} {cfg_name:48s} {sq:7.2f} dB {secs:6.1f} s", flush=True)
        for cfg_name, (family, kw) in ORT_CONFIGS.items():
            if (name, cfg_name) in ORT_SKIP or (configs and not any(c in cfg_name for c in configs)):
                continue
            try:
                path, secs, tmp = ort_quantize(name, cal, **kw)
                sq = data.sqnr_db(ref, data.outputs(path, held))
            except Exception as e:
                print(f"  {name} {cfg_name}: failed: {str(e).splitlines()[0][:200]}", file=sys.stderr)
                rows.append(
                    {
                        "model": name,
                        "tool": "onnxruntime",
                        "config": cfg_name,
                        "family": family,
                        "sqnr_db": None,
                        "seconds": None,
                        "error": str(e).splitlines()[0][:120],
                    }
                )
                continue
            rows.append(
                {
                    "model": name,
                    "tool": "onnxruntime",
                    "config": cfg_name,
                    "family": family,
                    "sqnr_db": round(sq, 2),
                    "seconds": round(secs, 1),
                }
            )
            print(f"{name:4s} {cfg_name:48s} {sq:7.2f} dB {secs:6.1f} s", flush=True)
    return rows


# ---- memory and speed: one calibration per child process ---------------------------------------------
def child(tool: str, model_name: str, method: str, n: int) -> None:
    """Run one calibration; print JSON with its wall time."""
    cal = data.Samples(model_name, data.raw_files(model_name, n))
    stages: dict = {}
    if tool == "ours":
        _, secs = ours(model_name, {"family": "", "act_quantizer_calibration": method}, cal, stages=stages)
    elif tool == "forward":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(data.model_path(model_name)), providers=["CPUExecutionProvider"])
        t = time.perf_counter()
        for s in cal:
            sess.run(None, s)
        secs = time.perf_counter() - t
    else:
        _, secs, _ = ort_quantize(model_name, cal, method=method)
    print(
        json.dumps(
            {
                "seconds": secs,
                "calibration_seconds": stages.get("calibration"),
                "observing_seconds": stages.get("calibration: observing"),
                "choosing_seconds": stages.get("calibration: choosing ranges"),
            }
        )
    )


def run_child(tool: str, model_name: str, method: str, n: int) -> dict:
    """Run ``child`` in a fresh process; return its wall time and peak RSS (from wait4)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "_child", tool, model_name, method, str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_mb = usage.ru_maxrss / 1024
    if proc.returncode != 0:
        return {"ok": False, "rss_mb": round(rss_mb), "seconds": None, "exit": proc.returncode}
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "ok": True,
        "rss_mb": round(rss_mb),
        "seconds": result["seconds"],
        "calibration_seconds": result.get("calibration_seconds"),
        "observing_seconds": result.get("observing_seconds"),
        "choosing_seconds": result.get("choosing_seconds"),
    }


def highest_peak(model_name: str, method: str, n: int, repeat: int) -> dict:
    """The run with the highest peak RSS of ``repeat``: with one session per core, the peak depends on
    whether the sessions' largest activations happen to coincide (+-10% from run to run)."""
    runs = [run_child("ours", model_name, method, n) for _ in range(repeat)]
    failed = [r for r in runs if not r["ok"]]
    if failed:  # a run that died early would report a small peak
        raise SystemExit(f"{model_name} {method} {n} samples: quantization failed (exit {failed[0]['exit']})")
    return max(runs, key=lambda r: r["rss_mb"])


def memory(models: list[str], methods: list[str], repeat: int = 3) -> list[dict]:
    rows = []
    for name in models:
        data.raw_files(name, 64)
        for m in methods:
            r16, r64 = highest_peak(name, m, 16, repeat), highest_peak(name, m, 64, repeat)
            ratio = r64["rss_mb"] / r16["rss_mb"]
            rows.append(
                {
                    "model": name,
                    "method": m,
                    "rss16_mb": r16["rss_mb"],
                    "rss64_mb": r64["rss_mb"],
                    "ratio": round(ratio, 3),
                }
            )
            print(
                f"{name} {m:10s} RSS 16: {r16['rss_mb']} MB  64: {r64['rss_mb']} MB  ratio {ratio:.3f}",
                flush=True,
            )
    return rows


ORT_METHOD = {"min-max": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def fastest(tool: str, model_name: str, method: str, n: int, repeat: int) -> dict:
    """The fastest of ``repeat`` runs (each in a fresh process): a single run of a sub-second job moves
    by tens of percent with what else the machine does."""
    runs = [run_child(tool, model_name, method, n) for _ in range(repeat)]
    key = "seconds" if tool == "forward" else "calibration_seconds"
    return min(runs, key=lambda r: r[key] if r["ok"] else float("inf"))


def speed(
    models: list[str], methods: list[str], n: int, n_ort_hist: int, n_more: int, repeat: int = 3
) -> list[dict]:
    """``n_more`` (> n): a second sample count, for the cost of each extra sample, without the fixed
    costs (loading the statistics model, choosing ranges) that dominate on a small model.  Every
    opendlc and forward-pass time is the fastest of ``repeat`` runs."""
    rows = []
    for name in models:
        fwd = {k: fastest("forward", name, "", k, repeat)["seconds"] for k in {n, n_ort_hist, n_more}}
        for m in methods:
            r = fastest("ours", name, m, n, repeat)
            more = fastest("ours", name, m, n_more, repeat)
            row = {
                "model": name,
                "method": m,
                "samples": n,
                "seconds": round(r["seconds"], 2),
                "calibration_seconds": round(r["calibration_seconds"], 2),
                "observing_seconds": round(r["observing_seconds"], 3),
                "choosing_seconds": round(r["choosing_seconds"], 3),
                "forward_seconds": round(fwd[n], 3),
                "vs_forward": round(r["calibration_seconds"] / fwd[n], 2),
                "more_samples": n_more,
                "more_vs_forward": round(more["calibration_seconds"] / fwd[n_more], 2),
                "marginal_vs_forward": round(
                    (more["calibration_seconds"] - r["calibration_seconds"]) / (fwd[n_more] - fwd[n]), 2
                ),
            }
            if m in ORT_METHOD:
                k = n if m == "min-max" else n_ort_hist
                o = run_child("ort", name, ORT_METHOD[m], k)
                mine = run_child("ours", name, m, k)  # one run each, like ONNX Runtime's
                row["ort_samples"] = k
                row["ort_seconds"] = round(o["seconds"], 2) if o["ok"] else None
                row["vs_ort"] = round(mine["seconds"] / o["seconds"], 3) if o["ok"] else None
                row["calibration_vs_ort"] = (
                    round(mine["calibration_seconds"] / o["seconds"], 3) if o["ok"] else None
                )
                row["ort_rss_mb"] = o["rss_mb"]
            rows.append(row)
            print(row, flush=True)
    return rows


# ---- docs/benchmarks.md ------------------------------------------------------------------------------
# FACTS.md section 5: the peers' best W8A8 output SQNR, measured with 64 calibration and 8 held-out crops.
PEERS = {
    "det": {"ONNX Runtime": 8.6, "AIMET": 7.6},
    "cls": {"ONNX Runtime": 16.5, "AIMET": 18.8},
    "rec": {"ONNX Runtime": 12.6, "AIMET": 14.0},
}


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _best(rows: list[dict], **match) -> dict | None:
    chosen = [
        r for r in rows if r.get("sqnr_db") is not None and all(r.get(k) == v for k, v in match.items())
    ]
    return max(chosen, key=lambda r: r["sqnr_db"], default=None)


def render_accuracy(rows: list[dict], n_cal: int, n_held: int) -> str:
    models = list(dict.fromkeys(r["model"] for r in rows))
    head = []
    for m in models:
        ours_w8a8 = max(
            (
                r
                for r in rows
                if r["model"] == m
                and r["tool"] == "opendlc"
                and r["family"].startswith("W8A8")
                and r["sqnr_db"] is not None
            ),
            key=lambda r: r["sqnr_db"],
            default=None,
        )
        default = next((r for r in rows if r["model"] == m and r["config"].startswith("SDK default")), None)
        ort_best = _best(rows, model=m, tool="onnxruntime", family="W8A8 per-tensor")
        ort_pc = _best(rows, model=m, tool="onnxruntime", family="W8A8 per-channel")
        ort = max([x for x in (ort_best, ort_pc) if x], key=lambda r: r["sqnr_db"], default=None)
        peers = PEERS.get(m, {})
        best_peer = max([*peers.values(), ort["sqnr_db"] if ort else -99])
        head.append(
            [
                m,
                f"{ours_w8a8['sqnr_db']:.2f}" if ours_w8a8 else None,
                ours_w8a8["config"] if ours_w8a8 else None,
                f"{default['sqnr_db']:.2f}" if default else None,
                f"{ort['sqnr_db']:.2f} ({ort['config'].replace('ORT ', '')})" if ort else None,
                " / ".join(f"{v}" for v in peers.values()),
                f"{ours_w8a8['sqnr_db'] - best_peer:+.2f}" if ours_w8a8 else None,
            ]
        )
    # one configuration for every model: the smallest margin over that model's best peer decides
    peer_best = {}
    for m in models:
        ort_rows = [
            r["sqnr_db"]
            for r in rows
            if r["model"] == m
            and r["tool"] == "onnxruntime"
            and r["sqnr_db"] is not None
            and r["family"].startswith("W8A8")
        ]
        peer_best[m] = max([*PEERS.get(m, {}).values(), *ort_rows])
    by_config: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["tool"] == "opendlc" and r["family"].startswith("W8A8") and r["sqnr_db"] is not None:
            by_config.setdefault(r["config"], {})[r["model"]] = r["sqnr_db"]
    single = sorted(
        (
            (min(v[m] - peer_best[m] for m in models), c, v)
            for c, v in by_config.items()
            if len(v) == len(models)
        ),
        reverse=True,
    )[:5]
    single_rows = [[c, *(f"{v[m]:.2f}" for m in models), f"{margin:+.2f}"] for margin, c, v in single]
    fam_rows = []
    for m in models:
        for fam in ("W8A8 per-tensor", "W8A8 per-channel", "W8A16"):
            o = _best(rows, model=m, tool="opendlc", family=fam)
            t = _best(rows, model=m, tool="onnxruntime", family=fam)
            fam_rows.append(
                [
                    m,
                    fam,
                    f"{o['sqnr_db']:.2f}" if o else None,
                    o["config"] if o else None,
                    f"{t['sqnr_db']:.2f}" if t else None,
                    t["config"] if t else None,
                ]
            )
    full = [
        [
            r["model"],
            r["tool"],
            r["config"],
            r["sqnr_db"] if r["sqnr_db"] is not None else r.get("error"),
            r["seconds"],
        ]
        for r in rows
    ]
    return "\n\n".join(
        [
            "## Quantization accuracy (issue 3)",
            f"Output SQNR against FP32 (dB, higher is better) on {n_held} held-out crops after "
            f"calibrating on {n_cal} "
            "crops; the PP-OCR models of FACTS.md section 4 at static shapes det 1x3x480x480, rec "
            "1x3x48x320, "
            "cls 1x3x48x192. Reproduce: `python bench/quant_bench.py accuracy --calibration "
            f"{n_cal} --heldout {n_held} --json acc.json` then `python bench/quant_bench.py write "
            "--accuracy acc.json`.",
            "### Best W8A8 against the peers",
            _table(
                [
                    "model",
                    "opendlc best W8A8",
                    "its configuration",
                    "SDK default (W8A8, 8-bit bias, min-max)",
                    "ONNX Runtime best W8A8, this run",
                    "peers in FACTS.md (ORT / AIMET)",
                    "margin over the best peer",
                ],
                head,
            ),
            "The best configuration is the best of those listed below on these held-out crops (a selection: "
            "every configuration's number is in the full table). The SDK default keeps 8-bit biases: "
            "a single 8-bit encoding for all of a layer's biases is what "
            "costs most there; 32-bit biases (`--bias_bitwidth 32`) are the first thing to turn on. "
            "FACTS.md's "
            "peer numbers were measured on 8 held-out crops of a similar but not identical crop set; the "
            "onnxruntime column is this run's own measurement on exactly our crops.",
            "### One configuration for every model",
            "The five configurations with the best worst-case margin over each model's best peer (FACTS.md's "
            "and this run's onnxruntime numbers).",
            _table(["configuration", *models, "smallest margin over the best peer"], single_rows),
            "### Per family",
            _table(
                ["model", "family", "opendlc best", "configuration", "ONNX Runtime best", "configuration"],
                fam_rows,
            ),
            "<details><summary>Every configuration</summary>\n\n"
            + _table(["model", "tool", "configuration", "SQNR dB (or error)", "seconds"], full)
            + "\n\n</details>",
        ]
    )


def render_memory(rows: list[dict]) -> str:
    return "\n\n".join(
        [
            "## Calibration memory (issue 3)",
            "Peak RSS of a whole quantization (one child process each, `os.wait4`) with 16 and 64 "
            "calibration samples read one at a time from raw files; each number is the highest of 3 runs "
            "(with one session per core the peak depends on whether the sessions' largest activations "
            "coincide: +-10% from run to run). "
            "Reproduce: `python bench/quant_bench.py memory --json m.json`.",
            _table(
                ["model", "method", "peak RSS 16 samples (MB)", "peak RSS 64 samples (MB)", "ratio 64/16"],
                [[r["model"], r["method"], r["rss16_mb"], r["rss64_mb"], f"{r['ratio']:.3f}"] for r in rows],
            ),
            "Calibration runs one session per core (here 2), each holding one sample's activations; in "
            "onnxruntime's priority-based order (docs/quantization-engine.md) a tensor is released as soon "
            "as its statistics are taken, which halved the peak (about 1.0 GB before). What matters is "
            "that nothing grows with the number of samples. "
            "For comparison, onnxruntime's Percentile and Entropy calibrators keep every activation of every "
            "sample (see the speed table's RSS column, and FACTS.md section 5: 6.7 GB at 16 samples, out of "
            "memory at 64 on the detector).",
        ]
    )


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _speed_summary(rows: list[dict]) -> str:
    """Per model, the histogram methods' ratios to the forward passes, against the <= 2x target, and
    where the time of the model with the largest ratio goes."""
    parts = []
    for model in dict.fromkeys(r["model"] for r in rows):
        hist = [r for r in rows if r["model"] == model and r["method"] != "min-max"]
        if not hist:
            continue
        text = f"{model} {_span([r['vs_forward'] for r in hist])}x at {hist[0]['samples']} samples"
        if all("more_vs_forward" in r for r in hist):
            text += f", {_span([r['more_vs_forward'] for r in hist])}x at {hist[0]['more_samples']}"
        if all("marginal_vs_forward" in r for r in hist):
            text += f" ({_span([r['marginal_vs_forward'] for r in hist])}x per extra sample)"
        parts.append(text)
    out = "Histogram methods against the forward passes: " + "; ".join(parts) + "."
    timed = [r for r in rows if "choosing_seconds" in r]
    if timed:
        worst = max(timed, key=lambda r: r["vs_forward"])
        same = [r for r in timed if r["model"] == worst["model"]]
        minmax = [r for r in same if r["method"] == "min-max"]
        out += (
            f" The largest ratio is {worst['model']} {worst['method']}'s: its {worst['samples']} forward "
            f"passes take {worst['forward_seconds']} s, so the 2x budget is "
            f"{round(2 * worst['forward_seconds'], 3)} s, against {worst['observing_seconds']} s observing "
            f"(creating the statistics sessions, running the samples, binning their subsamples and merging)"
            f" and {worst['choosing_seconds']} s choosing {worst['model']}'s activation ranges."
        )
        if minmax:
            out += (
                f" Observing min and max alone (min-max) takes {minmax[0]['observing_seconds']} s there;"
                " choosing ranges takes "
                + ", ".join(f"{r['method']} {r['choosing_seconds']} s" for r in same)
                + "."
            )
    return (
        out + " Calibration sessions run in onnxruntime's priority-based order, so each tensor's statistics "
        "are taken right after it is produced, while it is still in cache (docs/quantization-engine.md). "
        "Beyond the forward pass, observing costs onnxruntime kernels: a fused kernel (Conv+HardSwish) "
        "must write out its intermediate tensor, and every observed tensor is read for its min, max and "
        "subsample (a reduction or slice node each, plus a layout reorder after convolutions), which is "
        "then binned; the creation of the statistics sessions and the range choice do not shrink with "
        "the samples, so they weigh most on a small model with few samples."
    )


def render_speed(rows: list[dict]) -> str:
    return "\n\n".join(
        [
            "## Calibration speed (issue 3)",
            "Wall time of a whole opendlc quantization (normalisation, calibration, encodings) "
            "against the plain "
            "float forward passes over the same samples, and against "
            "`onnxruntime.quantization.quantize_static` "
            "with the matching calibrator (its Percentile/Entropy on fewer samples where it would run out of "
            "memory: both tools then run on that count). opendlc's calibration runs one single-threaded "
            "session per core on whole samples (docs/quantization-engine.md); the forward passes run in one "
            'onnxruntime session with its default threads; all use the same 2 cores. "calibration" counts '
            "building and loading the statistics model and the samples (observing), and choosing every "
            "activation range; quantize records both parts. "
            "Each opendlc and forward-pass time is the fastest of 3 runs, each in a fresh process; against "
            "ONNX Runtime, one run of each tool. "
            "Reproduce: `python bench/quant_bench.py speed --json s.json`.",
            _table(
                [
                    "model",
                    "method",
                    "samples",
                    "opendlc whole run s",
                    "of which calibration s",
                    "observing s",
                    "choosing ranges s",
                    "float forward passes s",
                    "calibration / forward",
                    "calibration / forward at the second count",
                    "each extra sample: calibration / forward",
                    "ORT samples",
                    "ORT s",
                    "opendlc whole run / ORT",
                    "calibration / ORT",
                    "ORT peak RSS MB",
                ],
                [
                    [
                        r["model"],
                        r["method"],
                        r["samples"],
                        r["seconds"],
                        r.get("calibration_seconds"),
                        r.get("observing_seconds"),
                        r.get("choosing_seconds"),
                        r.get("forward_seconds"),
                        r["vs_forward"],
                        (f"{r['more_vs_forward']} ({r['more_samples']})" if "more_vs_forward" in r else None),
                        (
                            f"{r['marginal_vs_forward']} ({r['samples']} to {r['more_samples']})"
                            if "marginal_vs_forward" in r
                            else None
                        ),
                        r.get("ort_samples"),
                        r.get("ort_seconds"),
                        r.get("vs_ort"),
                        r.get("calibration_vs_ort"),
                        r.get("ort_rss_mb"),
                    ]
                    for r in rows
                ],
            ),
            _speed_summary(rows),
        ]
    )


def write_section(name: str, text: str) -> None:
    doc = DOC.read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in doc:
        doc += f"\n{begin}\n{end}\n"
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    DOC.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--models", nargs="+", default=["cls", "rec", "det"])
    a.add_argument("--calibration", type=int, default=64)
    a.add_argument("--heldout", type=int, default=8)
    a.add_argument("--configs", nargs="*", help="substrings selecting configurations")
    m = sub.add_parser("memory")
    m.add_argument("--models", nargs="+", default=["det"])
    m.add_argument("--methods", nargs="+", default=["min-max", "sqnr", "entropy", "mse", "percentile"])
    m.add_argument("--repeat", type=int, default=3, help="runs per count; the highest peak counts")
    s = sub.add_parser("speed")
    s.add_argument("--models", nargs="+", default=["cls", "rec", "det"])
    s.add_argument("--methods", nargs="+", default=["min-max", "sqnr", "entropy", "mse", "percentile"])
    s.add_argument("--samples", type=int, default=64)
    s.add_argument("--ort-histogram-samples", type=int, default=16)
    s.add_argument("--more-samples", type=int, default=256, help="second count, for the per-sample cost")
    s.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest counts")
    for x in (a, m, s):
        x.add_argument("--json", type=Path, help="write the rows as JSON here")
    w = sub.add_parser("write", help="render JSON results into docs/benchmarks.md")
    w.add_argument("--accuracy", type=Path)
    w.add_argument("--memory", type=Path)
    w.add_argument("--speed", type=Path)
    w.add_argument("--calibration", type=int, default=64)
    w.add_argument("--heldout", type=int, default=32)
    c = sub.add_parser("_child")
    c.add_argument("tool")
    c.add_argument("model")
    c.add_argument("method")
    c.add_argument("n", type=int)
    args = p.parse_args()
    if args.cmd == "_child":
        child(args.tool, args.model, args.method, args.n)
        return
    if args.cmd == "write":
        if args.accuracy:
            rows = json.loads(args.accuracy.read_text())
            write_section("quant-accuracy", render_accuracy(rows, args.calibration, args.heldout))
        if args.memory:
            write_section("quant-memory", render_memory(json.loads(args.memory.read_text())))
        if args.speed:
            write_section("quant-speed", render_speed(json.loads(args.speed.read_text())))
        return
    if args.cmd == "accuracy":
        rows = accuracy(args.models, args.calibration, args.heldout, args.configs)
    elif args.cmd == "memory":
        rows = memory(args.models, args.methods, args.repeat)
    else:
        counts = (args.samples, args.ort_histogram_samples, args.more_samples)
        rows = speed(args.models, args.methods, *counts, repeat=args.repeat)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
