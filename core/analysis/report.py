"""What an analysis found, as data: the HTML page, the JSON twin and the terminal tables all read this."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from opendlc.analysis.svg import DisplayHistogram
from opendlc.analysis.variants import Item
from opendlc.encodings import EncodingSet

REPORT_FORMAT = "opendlc-analysis"
REPORT_VERSION = 1


def _db(v: float) -> float | str:
    """dB values for JSON: infinities as strings (JSON has no inf)."""
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


@dataclass
class LayerRow:
    """One activation: its SQNR in the QDQ simulation against FP32 (what the error is by then), the SQNR
    of its own encoding on its FP32 values (what this encoding alone costs), and the SQNR lost where it
    is computed (where error enters or is amplified)."""

    tensor: str
    layer: str
    op_type: str
    bitwidth: int
    sqnr_db: float
    encoding_sqnr_db: float
    drop_db: float  # SQNR lost where it is computed (against the tensors feeding it)
    clipped_fraction: float
    source: str

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("sqnr_db", "encoding_sqnr_db", "drop_db"):
            d[k] = _db(d[k])
        return d


@dataclass
class SensitivityRow:
    """The model output's SQNR when only this item is quantized (everything else float)."""

    item: Item
    output_sqnr_db: float

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.item.kind,
            "tensor": self.item.tensor,
            "layer": self.item.layer,
            "op_type": self.item.op_type,
            "quantized": list(self.item.params) or [self.item.tensor],
            "output_sqnr_db": _db(self.output_sqnr_db),
        }


@dataclass
class VerdictStep:
    """One item tried while choosing the verdict: the output SQNR with it (and those kept before) promoted."""

    item: Item
    promoted_to: str
    output_sqnr_db: float
    gain_db: float  # over the SQNR before this round
    kept: bool
    round: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.item.kind,
            "tensor": self.item.tensor,
            "layer": self.item.layer,
            "promoted_to": self.promoted_to,
            "output_sqnr_db": _db(self.output_sqnr_db),
            "gain_db": _db(self.gain_db),
            "kept": self.kept,
            "round": self.round,
        }


@dataclass
class Verdict:
    """The few items worth promoting, and what re-quantizing with them measured."""

    items: list[tuple[Item, str]]  # (item, promoted to)
    baseline_sqnr_db: float  # re-quantized without the overrides (or the container itself)
    sqnr_db: float  # re-quantized with the overrides file
    gain_db: float
    chosen_sqnr_db: float  # measured while choosing, on this container's encodings
    steps: list[VerdictStep]
    overrides: EncodingSet | None
    overrides_file: str | None = None  # set when written
    how_measured: str = ""
    summary: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "keep": [
                {"kind": i.kind, "tensor": i.tensor, "layer": i.layer, "op_type": i.op_type, "promoted_to": t}
                for i, t in self.items
            ],
            "baseline_output_sqnr_db": _db(self.baseline_sqnr_db),
            "output_sqnr_db": _db(self.sqnr_db),
            "gain_db": _db(self.gain_db),
            "measured_while_choosing_db": _db(self.chosen_sqnr_db),
            "how_measured": self.how_measured,
            "steps": [s.to_json() for s in self.steps],
            "overrides_file": self.overrides_file,
            "overrides": [t.name for t in self.overrides.tensors.values()] if self.overrides else [],
        }


@dataclass
class EncodingRow:
    tensor: str
    kind: str  # activation, weight, bias, param
    bitwidth: int | str
    scale: list[float]
    offset: list[int]
    min: list[float]
    max: list[float]
    method: str
    axis: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def _span(self, values: list, fmt: str) -> str:
        if not values:
            return ""
        if len(values) == 1:
            return format(values[0], fmt)
        return f"{format(min(values), fmt)} .. {format(max(values), fmt)} ({len(values)} ch)"

    @property
    def scale_text(self) -> str:
        return self._span(self.scale, ".4g")

    @property
    def offset_text(self) -> str:
        return self._span(self.offset, "d")

    @property
    def min_text(self) -> str:
        return self._span(self.min, ".4g")

    @property
    def max_text(self) -> str:
        return self._span(self.max, ".4g")


@dataclass
class Report:
    model: str
    options: dict[str, Any]
    samples: int
    sensitivity_samples: int
    output_sqnr: dict[str, float]  # per output, on the sensitivity samples
    error_split: dict[str, float]  # output SQNR with only the activations / only the params quantized
    layers: list[LayerRow]  # graph order
    sensitivity: list[SensitivityRow]  # most harmful first
    sensitivity_how: str
    histograms: dict[str, DisplayHistogram]
    encodings: list[EncodingRow]
    verdict: Verdict
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def output_sqnr_db(self) -> float:
        return min(self.output_sqnr.values())

    @property
    def worst_layers(self) -> list[LayerRow]:
        """Activations worst first (lowest SQNR against FP32)."""
        return sorted(self.layers, key=lambda r: r.sqnr_db)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            "summary": {
                "model": self.model,
                "samples": self.samples,
                "sensitivity_samples": self.sensitivity_samples,
                "output_sqnr_db": {k: _db(v) for k, v in self.output_sqnr.items()},
                "output_sqnr_db_with_only": {k: _db(v) for k, v in self.error_split.items()},
                "activations": len(self.layers),
                "encodings": len(self.encodings),
                "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
                "notes": self.notes,
            },
            "options": self.options,
            "layers": [r.to_json() for r in self.worst_layers],
            "sensitivity": {
                "how": self.sensitivity_how,
                "rows": [r.to_json() for r in self.sensitivity],
            },
            "histograms": {k: h.to_json() for k, h in self.histograms.items()},
            "encodings": [r.to_json() for r in self.encodings],
            "verdict": self.verdict.to_json(),
        }
