"""HTP agreement benchmark: PP-OCR models quantized by opendlc, prepared for SoCs and architectures, run on
the HTP emulator and compared with the CPU simulation of the same quantized model and with FP32.

    python bench/htp_agreement.py [--models det rec cls] [--calibration 64] [--heldout 8] [--write]

For each model and quantizer configuration: quantize (opendlc, calibration crops), prepare cache records for
sm8350, sm8550, sm8650, sm8750 (``--htp_socs``) and for v68, v73 (``--htp_archs``), check that a second
preparation without ``overwrite`` skips every record and that one with ``overwrite`` regenerates them, then
run every record on the HTP emulator over the held-out crops.  SQNR is taken over all held-out outputs
together: emulator vs the CPU QDQ simulation (``to_qdq_model`` on onnxruntime's CPU EP), emulator vs FP32,
CPU simulation vs FP32.  Results print as a Markdown table; ``--write`` puts it in docs/benchmarks.md
between this benchmark's markers (its own section), and the raw numbers go to a JSON file beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402

from opendlc import container as dlc  # noqa: E402
from opendlc.htp import HtpPrepareOptions, prepare_records, run_record  # noqa: E402
from opendlc.quant.api import quantize  # noqa: E402
from opendlc.quant.export import to_qdq_model  # noqa: E402
from opendlc.quant.options import QuantizerOptions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "bench" / "htp_agreement.json"
BEGIN, END = "<!-- htp-agreement:begin -->", "<!-- htp-agreement:end -->"
SOCS = ["sm8350", "sm8550", "sm8650", "sm8750"]
ARCHS = ["v68", "v73"]
CONFIGS: dict[str, dict] = {
    "SDK default (W8A8 per-tensor, 8-bit bias, min-max)": {},
    "W8A8 per-channel, 32-bit bias, min-max": {"use_per_channel_quantization": True, "bias_bitwidth": 32},
}


def cpu_outputs(model, samples: data.Samples) -> np.ndarray:
    return data.outputs(model, samples)


def htp_outputs(container: dlc.Container, record_id: str, samples: data.Samples) -> tuple[np.ndarray, float]:
    record = next(r for r in container.records if r.id == record_id)
    soc, arch = record.info.get("soc"), None if record.info.get("soc") else record.info["arch"]
    runner = run_record(container, soc=soc, arch=arch)
    first = runner.output_names[0]
    start = time.monotonic()
    values = [np.asarray(runner.run(s)[first], dtype=np.float64).ravel() for s in samples]
    return np.concatenate(values), (time.monotonic() - start) / max(len(samples), 1)


def bench_model(name: str, config_name: str, config: dict, n_cal: int, n_held: int) -> list[dict]:
    calibration = data.Samples(name, data.raw_files(name, n_cal))
    heldout = data.Samples(name, data.raw_files(name, n_held, heldout=True))
    t = time.monotonic()
    q = quantize(
        dlc.Container(model=data.model(name)), calibration, QuantizerOptions(**config), progress=False
    )
    quant_s = time.monotonic() - t
    fp32 = data.outputs(q.model, heldout)
    cpu = cpu_outputs(to_qdq_model(q), heldout)

    options = HtpPrepareOptions(progress=False)
    t = time.monotonic()
    by_soc = prepare_records(q, socs=SOCS, options=options)
    by_arch = prepare_records(by_soc.container, archs=ARCHS, options=options)
    prepare_s = time.monotonic() - t
    cached = by_arch.container
    again_soc = prepare_records(cached, socs=SOCS, options=options)
    again_arch = prepare_records(cached, archs=ARCHS, options=options)
    skipped = all(r.status == "skipped" for r in again_soc.results + again_arch.results)
    t = time.monotonic()
    regen = prepare_records(cached, socs=SOCS, overwrite=True, options=options)
    regen_s = time.monotonic() - t
    regenerated = all(r.status == "replaced" for r in regen.results)

    rows = []
    for result in by_soc.results + by_arch.results:
        rid = result.record_id
        htp, per_run = htp_outputs(cached, rid, heldout)
        info = result.record.info
        rows.append(
            {
                "model": name,
                "config": config_name,
                "record": rid,
                "target": info.get("soc") or info["arch"],
                "compiled_for": info["compiled_for"],
                "bytes": len(result.record.data),
                "prepare_s": round(result.seconds, 1),
                "emulator_s_per_input": round(per_run, 2),
                "htp_vs_cpu_db": round(data.sqnr_db(cpu, htp), 1),
                "htp_vs_fp32_db": round(data.sqnr_db(fp32, htp), 1),
                "cpu_vs_fp32_db": round(data.sqnr_db(fp32, cpu), 1),
                "identical_to_cpu": bool(np.array_equal(cpu, htp)),
                "unquantized_ops": len(info.get("unquantized_ops", [])),
                "second_run_skipped": skipped,
                "overwrite_regenerated": regenerated,
                "quantize_s": round(quant_s, 1),
                "prepare_all_s": round(prepare_s, 1),
                "regenerate_socs_s": round(regen_s, 1),
                "calibration": n_cal,
                "heldout": n_held,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| model | configuration | record | compiled for | emulator vs CPU QDQ | emulator vs FP32 "
        "| CPU QDQ vs FP32 | unquantized ops | s / input |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        built = r["compiled_for"]
        lines.append(
            f"| {r['model']} | {r['config']} | {r['record']} | {built.get('soc')} v{built.get('dsp_arch')} "
            f"{built.get('vtcm_bytes', 0) >> 20} MB | {r['htp_vs_cpu_db']} dB | {r['htp_vs_fp32_db']} dB "
            f"| {r['cpu_vs_fp32_db']} dB | {r['unquantized_ops']} | {r['emulator_s_per_input']} |"
        )
    return head + "\n".join(lines) + "\n"


def summary(rows: list[dict]) -> str:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for config in dict.fromkeys(r["config"] for r in rows if r["model"] == model):
            rs = [r for r in rows if r["model"] == model and r["config"] == config]
            first = rs[0]
            skipped = "yes" if first["second_run_skipped"] else "NO"
            regenerated = "yes" if first["overwrite_regenerated"] else "NO"
            out.append(
                f"- {model}, {config}: {len(rs)} records (prepared in {first['prepare_all_s']} s); "
                f"second run without overwrite skipped all: {skipped}; with overwrite the SoC records "
                f"were regenerated: {regenerated} ({first['regenerate_socs_s']} s)"
            )
    return "\n".join(out) + "\n"


def write_doc(text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) :]
    else:
        doc = (
            doc.rstrip("\n")
            + "\n\n## HTP: emulator vs CPU simulation (bench/htp_agreement.py)\n\n"
            + block
            + "\n"
        )
    DOC.write_text(doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cls", "rec", "det"])
    p.add_argument("--configs", nargs="+", type=int, default=list(range(len(CONFIGS))), help="indexes")
    p.add_argument("--calibration", type=int, default=64)
    p.add_argument("--heldout", type=int, default=8)
    p.add_argument("--write", action="store_true", help="put the results in docs/benchmarks.md")
    a = p.parse_args()
    rows: list[dict] = []
    names = list(CONFIGS)
    for model in a.models:
        for i in a.configs:
            rows += bench_model(model, names[i], CONFIGS[names[i]], a.calibration, a.heldout)
    text = (
        f"PP-OCR models quantized by opendlc ({a.calibration} calibration crops), {a.heldout} held-out "
        "crops; SQNR over all held-out outputs together.\n\n" + summary(rows) + "\n" + table(rows)
    )
    print(text)
    RESULTS.write_text(json.dumps(rows, indent=1))
    if a.write:
        write_doc(text)


if __name__ == "__main__":
    main()
