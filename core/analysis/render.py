"""The report as one self-contained HTML page (a Jinja2 template shipped with opendlc), its JSON twin,
the overrides file of the verdict, and tables on the terminal."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup

from opendlc.analysis.api import OVERRIDES_VERSION
from opendlc.analysis.report import Report
from opendlc.analysis.svg import histogram_svg, sqnr_profile_svg
from opendlc.atomic import write_bytes_atomic
from opendlc.errors import UsageError
from opendlc.tables import print_table

TEMPLATE = "report.html.j2"
TERMINAL_ROWS = 10


@dataclass
class ReportFiles:
    html: Path
    json: Path
    overrides: Path | None


def report_paths(html: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """The page, its JSON twin beside it (same stem), and the verdict's overrides file."""
    html = Path(html)
    twin = html.with_suffix(".json")
    if twin == html:
        raise UsageError(f"{html}: the report page needs another name than its JSON twin (use .html)")
    return html, twin, html.with_name(f"{html.stem}_overrides.json")


def db(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.2f}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("opendlc.analysis", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["db"] = db
    env.filters["pct"] = lambda v: f"{100 * v:.2f}%" if v else "0"
    return env


def render_html(report: Report, *, json_name: str | None = None, overrides_name: str | None = None) -> str:
    layers = report.layers
    profile = Markup(
        sqnr_profile_svg(
            [r.tensor for r in layers], [r.sqnr_db for r in layers], [r.encoding_sqnr_db for r in layers]
        )
    )
    pictures = [
        (r, Markup(histogram_svg(report.histograms[r.tensor], f"{r.tensor}: values and encoding range")))
        for r in report.worst_layers
        if r.tensor in report.histograms
    ]
    worst = min((r.output_sqnr_db for r in report.sensitivity), default=0.0)
    # bar length: the output noise power this item adds alone, relative to the most harmful item's
    sensitivity = [
        (
            s,
            round(120 * 10 ** ((worst - s.output_sqnr_db) / 10))
            if math.isfinite(s.output_sqnr_db) and math.isfinite(worst)
            else 0,
        )
        for s in report.sensitivity
    ]
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            r=report,
            profile=profile,
            pictures=pictures,
            sensitivity=sensitivity,
            json_name=json_name,
            overrides_name=overrides_name,
            overrides_version=OVERRIDES_VERSION,
        )
    )


def write_report(report: Report, html: str | os.PathLike[str]) -> ReportFiles:
    """Write the page, the JSON twin and (when the verdict has one) the overrides file, each atomically."""
    page, twin, overrides = report_paths(html)
    written_overrides = None
    if report.verdict.overrides is not None:
        report.verdict.overrides_file = overrides.name
        written_overrides = overrides
    text = render_html(report, json_name=twin.name, overrides_name=report.verdict.overrides_file)
    data = json.dumps(report.to_json(), indent=1, allow_nan=False)
    if written_overrides is not None:
        aimet = report.verdict.overrides.to_aimet(OVERRIDES_VERSION)  # type: ignore[union-attr]
        write_bytes_atomic(written_overrides, json.dumps(aimet, indent=2).encode())
    write_bytes_atomic(twin, data.encode())
    write_bytes_atomic(page, text.encode())
    return ReportFiles(page, twin, written_overrides)


def print_tables(report: Report, rows: int = TERMINAL_ROWS) -> None:
    """The worst layers, the most sensitive items and the verdict, as tables."""
    print_table(
        f"Output SQNR against FP32 ({report.sensitivity_samples} samples)",
        ["output", "SQNR dB"],
        [(k, db(v)) for k, v in report.output_sqnr.items()]
        + [(f"({what} quantized)", db(v)) for what, v in report.error_split.items()],
    )
    print_table(
        f"Worst activations ({len(report.layers)}): SQNR of the quantized simulation against FP32",
        ["tensor", "op", "bits", "SQNR dB", "own encoding dB", "lost here dB", "clipped"],
        [
            (
                r.tensor,
                r.op_type,
                r.bitwidth,
                db(r.sqnr_db),
                db(r.encoding_sqnr_db),
                db(r.drop_db),
                f"{100 * r.clipped_fraction:.2f}%",
            )
            for r in report.worst_layers[:rows]
        ],
    )
    print_table(
        "Most sensitive: output SQNR when only this is quantized",
        ["kind", "tensor", "layer", "op", "output SQNR dB"],
        [
            (s.item.kind, s.item.tensor, s.item.layer, s.item.op_type, db(s.output_sqnr_db))
            for s in report.sensitivity[:rows]
        ],
    )
    v = report.verdict
    if v.steps:
        print_table(
            "Verdict: items promoted on top of those kept, round by round",
            ["round", "kind", "tensor", "to", "output SQNR dB", "gain dB", "kept"],
            [
                (
                    s.round,
                    s.item.kind,
                    s.item.tensor,
                    s.promoted_to,
                    db(s.output_sqnr_db),
                    f"{s.gain_db:+.2f}",
                    "yes" if s.kept else "no",
                )
                for s in v.steps
            ],
        )
    print_table(
        "Verdict (measured by re-quantizing with the overrides)",
        ["baseline dB", "with overrides dB", "gain dB", "keep"],
        [
            (
                db(v.baseline_sqnr_db),
                db(v.sqnr_db),
                f"{v.gain_db:+.2f}",
                ", ".join(f"{i.tensor} -> {t}" for i, t in v.items) or "nothing",
            )
        ],
    )
