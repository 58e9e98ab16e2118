"""Cross-layer equalization benchmark (issue 5): opendlc's ``cle`` against aimet-onnx's ``equalize_model``.

    python bench/cle_bench.py [--models cls det] [--calibration 64] [--heldout 32] [--json rows.json]
                              [--calibration-seed N [N ...]] [--aimet-python PATH]

For each PP-OCR model (input pinned to its static benchmark shape) and each W8A8 per-tensor configuration
(min-max and sqnr activation calibration with 32-bit biases, and the SDK default: min-max, 8-bit biases),
the output SQNR against FP32 on held-out crops of three float models quantized the same way by opendlc:

- ``none``: the model as it is;
- ``opendlc cle``: the same quantization with ``apply_algorithms=["cle"]``;
- ``AIMET``: aimet-onnx's ``equalize_model`` run on the same static float model, saved, then quantized by
  opendlc exactly as ``none`` -- so only the equalization differs.

Each equalized float model is also compared with the original on the held-out crops (largest absolute
output difference over the largest absolute output): equalization should keep the float function.

aimet-onnx is not one of opendlc's dependencies.  It is used in this interpreter if importable, else in
the interpreter given by ``--aimet-python`` (default ``$OPENDLC_AIMET_PYTHON`` or ``/tmp/venv-aimet``),
which runs this file's ``_aimet`` step in a child process.  Without it the AIMET rows are left out and
the script says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
DEFAULT_AIMET_PYTHON = Path(os.environ.get("OPENDLC_AIMET_PYTHON", "/tmp/venv-aimet/bin/python"))

# name -> QuantizerOptions keywords; all W8A8 per-tensor (the option defaults)
CONFIGS: dict[str, dict[str, Any]] = {
    "min-max, bias32": {"act_quantizer_calibration": "min-max", "bias_bitwidth": 32},
    "sqnr, bias32": {"act_quantizer_calibration": "sqnr", "bias_bitwidth": 32},
    "min-max, bias8 (SDK default)": {"act_quantizer_calibration": "min-max", "bias_bitwidth": 8},
}
EQUALIZATIONS = ("none", "opendlc cle", "AIMET")


def _data() -> ModuleType:
    """The bench helpers (imported late: the AIMET child step does not need them)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import data

    return data


# ---- AIMET's equalization, in whichever interpreter has aimet-onnx ----------------------------------
def aimet_equalize_file(src: Path, dst: Path) -> None:
    """aimet-onnx's documented CLE entry point on the float model ``src``; the result is saved to ``dst``."""
    from aimet_onnx.cross_layer_equalization import equalize_model

    model = onnx.load(src)
    equalize_model(model)  # in place: BN fold, ReLU6 -> ReLU, cross-layer scaling, high-bias fold
    onnx.save(model, dst)


def aimet_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float model as AIMET is given it: ``Constant``-node weights moved to initializers.

    PP-OCR (paddle2onnx) keeps every weight in a ``Constant`` node as ``float_data``.  aimet-onnx 2.42
    reads those, but writes the folded / scaled weights into ``raw_data`` next to the old ``float_data``:
    an invalid tensor (onnxruntime reads ``raw_data``, onnx's version converter refuses it).  With the
    weights as initializers (what an ONNX simplifier or exporter's constant folding gives; the float
    function is unchanged) AIMET writes valid tensors.
    """
    from opendlc.graph.normalize import constants_to_initializers

    return constants_to_initializers(model)


def _ambiguous_tensors(model: onnx.ModelProto) -> list[str]:
    """Tensors holding values in more than one field (which field a reader takes is up to the reader)."""
    fields = ("raw_data", "float_data", "int32_data", "int64_data", "double_data")
    tensors = list(model.graph.initializer) + [
        a.t for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR
    ]
    return [t.name for t in tensors if sum(len(getattr(t, f)) > 0 for f in fields) > 1]


def aimet_in_process() -> bool:
    try:
        import aimet_onnx.cross_layer_equalization  # noqa: F401
    except Exception:  # not installed, or an incompatible torch/onnx: either way unavailable here
        return False
    return True


def aimet_equalized(src: Path, dst: Path, aimet_python: Path | None) -> str | None:
    """Write AIMET's equalization of ``src`` to ``dst``; return None, or why AIMET was not available."""
    if aimet_in_process():
        aimet_equalize_file(src, dst)
        return None
    if aimet_python is None or not aimet_python.exists():
        return f"aimet-onnx is not importable here and {aimet_python} does not exist"
    proc = subprocess.run(
        [str(aimet_python), __file__, "_aimet", str(src), str(dst)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return f"aimet-onnx failed in {aimet_python}: {last}"
    return None


# ---- measurements ------------------------------------------------------------------------------------
STANDARD_HELDOUT = 32  # the held-out raw files the benchmarks share


class InMemory:
    """A sized, re-iterable sample set held in memory."""

    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.samples)


def _crops(name: str, n: int, seed: int) -> InMemory:
    import realmodels  # on the path once the bench helpers are imported

    crops = realmodels.image_crops(realmodels.input_shape(name), n, seed=seed)
    return InMemory([{"x": c.astype(np.float32)} for c in crops])


def heldout_set(name: str, n: int) -> Iterable[dict[str, np.ndarray]]:
    """The first ``n`` held-out crops.  Beyond the shared 32 files (a larger set makes the 2-class
    classifier's SQNR less noisy) the same seed's crops are made in memory rather than rewriting the
    shared files while other benchmarks may be reading them."""
    data = _data()
    if n <= STANDARD_HELDOUT:
        return data.Samples(name, data.raw_files(name, n, heldout=True))
    return _crops(name, n, data.HELDOUT_SEED)


def calibration_set(name: str, n: int, seed: int | None) -> Iterable[dict[str, np.ndarray]]:
    """The shared calibration files, or (``seed`` given) another draw of crops made in memory: how much
    a difference depends on the calibration sample."""
    data = _data()
    if seed is None or seed == data.CALIBRATION_SEED:
        return data.Samples(name, data.raw_files(name, n))
    if seed == data.HELDOUT_SEED:
        raise SystemExit(f"--calibration-seed {seed} is the held-out seed")
    return _crops(name, n, seed)


def quantized_outputs(
    model: onnx.ModelProto,
    config: dict[str, Any],
    calibration: Iterable[dict[str, np.ndarray]],
    heldout: Iterable[dict[str, np.ndarray]],
) -> np.ndarray:
    from opendlc.container import Container
    from opendlc.quant.api import quantize
    from opendlc.quant.export import to_qdq_model
    from opendlc.quant.options import QuantizerOptions

    data = _data()
    q = quantize(Container(model), calibration, QuantizerOptions(**config), progress=False)
    return data.outputs(to_qdq_model(q), heldout)


def float_agreement(ref: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """(largest |difference| over the largest |reference|, SQNR in dB) of an equalized float model."""
    data = _data()
    return float(np.abs(ref - test).max() / np.abs(ref).max()), data.sqnr_db(ref, test)


def opendlc_equalized_float(
    model: onnx.ModelProto, calibration: Iterable[dict[str, np.ndarray]]
) -> tuple[onnx.ModelProto, int, int]:
    """The float model ``cle`` hands to calibration with the SDK's default 8-bit biases (normalised, as
    the quantizer does first, then equalized with the quantizer's first calibration inputs and its bias
    grid), the number of convolution pairs equalized and the number of pairs a bias was absorbed
    across."""
    from itertools import islice

    from opendlc.algorithms import RETAINED_SAMPLES
    from opendlc.graph.equalize import equalize
    from opendlc.graph.normalize import normalize
    from opendlc.plugins.algorithms.cle import bias_grid
    from opendlc.quant.options import QuantizerOptions

    result = equalize(
        normalize(model).model,
        samples=list(islice(calibration, RETAINED_SAMPLES)),
        bias_grid=bias_grid(QuantizerOptions(bias_bitwidth=8)),
    )
    return result.model, len(result.pairs), len(result.absorbed)


def run(
    models: list[str],
    n_cal: int,
    n_held: int,
    aimet_python: Path | None,
    calibration_seeds: list[int | None] | None = None,
) -> tuple[list[dict], list[dict], list[str]]:
    """(SQNR rows, float-agreement rows, notes).  Each calibration draw (None: the shared files) is
    quantized against the same held-out crops; the float check uses the first draw."""
    data = _data()
    seeds = calibration_seeds or [None]
    rows: list[dict] = []
    agreement: list[dict] = []
    notes: list[str] = []
    for name in models:
        cal = calibration_set(name, n_cal, seeds[0])
        held = heldout_set(name, n_held)
        original = data.model(name)
        ref = data.outputs(original, held)

        ours, n_pairs, n_absorbed = opendlc_equalized_float(original, cal)
        diff, fsq = float_agreement(ref, data.outputs(ours, held))
        agreement.append(
            {
                "model": name,
                "equalization": "opendlc cle",
                "pairs": n_pairs,
                "absorbed": n_absorbed,
                "max_rel_diff": diff,
                "float_sqnr_db": fsq,
            }
        )
        floats: dict[str, onnx.ModelProto] = {"none": original}
        with tempfile.TemporaryDirectory(prefix="cle_bench_") as tmp:
            src, dst = Path(tmp) / f"{name}_prepared.onnx", Path(tmp) / f"{name}_aimet.onnx"
            onnx.save(aimet_input(original), src)
            t = time.perf_counter()
            why = aimet_equalized(src, dst, aimet_python)
            if why is None:
                print(f"{name}: AIMET equalize_model {time.perf_counter() - t:.1f} s", file=sys.stderr)
                floats["AIMET"] = onnx.load(dst)
                bad = _ambiguous_tensors(floats["AIMET"])
                if bad:
                    raise SystemExit(f"{name}: AIMET wrote tensors with two value fields: {bad[:5]}")
                diff, fsq = float_agreement(ref, data.outputs(floats["AIMET"], held))
                agreement.append(
                    {
                        "model": name,
                        "equalization": "AIMET",
                        "pairs": None,
                        "absorbed": None,
                        "max_rel_diff": diff,
                        "float_sqnr_db": fsq,
                    }
                )
            else:
                notes.append(f"{name}: AIMET not available ({why}); its rows are left out")
                print(notes[-1], file=sys.stderr)

        for seed in seeds:
            rows += _quantized_rows(name, floats, calibration_set(name, n_cal, seed), held, ref, seed)
    return rows, agreement, notes


def _quantized_rows(
    name: str,
    floats: dict[str, onnx.ModelProto],
    cal: Iterable[dict[str, np.ndarray]],
    held: Iterable[dict[str, np.ndarray]],
    ref: np.ndarray,
    seed: int | None,
) -> list[dict]:
    data = _data()
    draw = "shared files" if seed is None or seed == data.CALIBRATION_SEED else f"seed {seed}"
    rows: list[dict] = []
    original = floats["none"]
    for cfg_name, cfg in CONFIGS.items():
        for eq in EQUALIZATIONS:
            if eq == "opendlc cle":
                model, options = original, {**cfg, "apply_algorithms": ["cle"]}
            elif eq in floats:
                model, options = floats[eq], cfg
            else:
                continue
            t = time.perf_counter()
            sq = data.sqnr_db(ref, quantized_outputs(model, options, cal, held))
            secs = time.perf_counter() - t
            rows.append(
                {
                    "model": name,
                    "calibration": draw,
                    "config": cfg_name,
                    "equalization": eq,
                    "sqnr_db": round(sq, 2),
                    "seconds": round(secs, 1),
                }
            )
            print(
                f"{name:4s} {draw:12s} {cfg_name:30s} {eq:12s} {sq:7.2f} dB  {secs:6.1f} s",
                file=sys.stderr,
                flush=True,
            )
    return rows


def markdown(rows: list[dict], agreement: list[dict]) -> str:
    """SQNR: one line per model and configuration, the equalizations side by side; then the float check."""
    lines = [
        "| model | W8A8 per-tensor | none | opendlc `cle` | AIMET `equalize_model` |",
        "|---|---|---:|---:|---:|",
    ]
    seen: dict[tuple[str, str], dict[str, float]] = {}
    first_draw = rows[0]["calibration"] if rows else None
    for r in rows:
        if r["calibration"] != first_draw:
            continue
        seen.setdefault((r["model"], r["config"]), {})[r["equalization"]] = r["sqnr_db"]
    for (model, cfg), by_eq in seen.items():
        cells = [f"{by_eq[e]:.2f}" if e in by_eq else "n/a" for e in EQUALIZATIONS]
        lines.append(f"| {model} | {cfg} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | equalized float model | pairs | biases absorbed across | max relative difference "
        "| float SQNR dB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for a in agreement:
        pairs = "" if a["pairs"] is None else str(a["pairs"])
        cells = [
            a["model"],
            a["equalization"],
            pairs,
            "" if a.get("absorbed") is None else str(a["absorbed"]),
            f"{a['max_rel_diff']:.1e}",
            f"{a['float_sqnr_db']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draws_markdown(rows: list[dict]) -> str:
    """Per model and configuration: none / cle / AIMET for each calibration draw, their mean, and how
    often cle is at least AIMET's and above none."""
    draws = list(dict.fromkeys(r["calibration"] for r in rows))
    by: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for r in rows:
        by.setdefault((r["model"], r["config"]), {}).setdefault(r["calibration"], {})[r["equalization"]] = r[
            "sqnr_db"
        ]
    lines = [
        "| model | W8A8 per-tensor | " + " | ".join(draws) + " | mean | `cle` >= AIMET | `cle` > none |",
        "|---|---|" + "---|" * len(draws) + "---|---:|---:|",
    ]
    for (model, cfg), per_draw in by.items():
        cells, vs_aimet, vs_none = [], 0, 0
        for d in draws:
            v = per_draw.get(d, {})
            cells.append(" / ".join(f"{v[e]:.2f}" if e in v else "n/a" for e in EQUALIZATIONS))
            vs_aimet += "AIMET" in v and v["opendlc cle"] >= v["AIMET"]
            vs_none += v["opendlc cle"] > v["none"]
        means = [
            np.mean([per_draw[d][e] for d in draws]) if all(e in per_draw[d] for d in draws) else None
            for e in EQUALIZATIONS
        ]
        cells.append(" / ".join("n/a" if m is None else f"{m:.2f}" for m in means))
        n = len(draws)
        lines.append(
            f"| {model} | {cfg} | " + " | ".join(cells) + f" | {vs_aimet} of {n} | {vs_none} of {n} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_aimet":  # child step in the AIMET interpreter
        aimet_equalize_file(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cls", "det"])
    p.add_argument("--calibration", type=int, default=64)
    p.add_argument("--heldout", type=int, default=STANDARD_HELDOUT)
    p.add_argument(
        "--calibration-seed",
        type=int,
        nargs="+",
        help="draw other calibration crops (default: the shared files, which seed 0 also names); "
        "several seeds: each draw is quantized and a per-draw table with means is printed",
    )
    p.add_argument("--aimet-python", type=Path, default=DEFAULT_AIMET_PYTHON)
    p.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = p.parse_args()

    from opendlc.tables import print_table

    rows, agreement, notes = run(
        args.models, args.calibration, args.heldout, args.aimet_python, args.calibration_seed
    )
    print_table(
        f"W8A8 per-tensor output SQNR vs FP32 "
        f"({args.calibration} calibration, {args.heldout} held-out crops)",
        ["model", "calibration", "configuration", "equalization", "SQNR dB", "seconds"],
        [
            [
                r["model"],
                r["calibration"],
                r["config"],
                r["equalization"],
                f"{r['sqnr_db']:.2f}",
                r["seconds"],
            ]
            for r in rows
        ],
    )
    print_table(
        "Equalized float model vs the original (held-out crops)",
        ["model", "equalization", "pairs", "absorbed across", "max relative difference", "float SQNR dB"],
        [
            [
                a["model"],
                a["equalization"],
                a["pairs"],
                a["absorbed"],
                f"{a['max_rel_diff']:.1e}",
                f"{a['float_sqnr_db']:.1f}",
            ]
            for a in agreement
        ],
    )
    print(markdown(rows, agreement))
    if len(args.calibration_seed or []) > 1:
        print()
        print(draws_markdown(rows))
    for n in notes:
        print(n)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "float": agreement, "notes": notes}, indent=1))


if __name__ == "__main__":
    main()
