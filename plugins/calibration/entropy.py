"""entropy: the range of least KL divergence between the histogram and its quantized version.

TensorRT's entropy calibration, adapted to any schema: candidate ranges shrink each end of the observed
range separately (asymmetric schemas) or both together (symmetric ones), and each candidate's cells are
those of the grid the schema would produce.  Like TensorRT, a grid finer than the histogram's bins
cannot be judged, so the range can shrink only while the step stays at least one bin wide; when no
candidate qualifies (16-bit grids on a 2048-bin histogram) the observed range is used.
"""

from __future__ import annotations

from collections.abc import Sequence

from opendlc.calibration import CalibrationMethod, CalibrationOptions
from opendlc.calibration_search import CandidateGrids, KlOfMany, search_ranges, trivial_range
from opendlc.hookspecs import hookimpl
from opendlc.observers import TensorStats
from opendlc.schemas import QuantizationSchema


class Entropy(CalibrationMethod):
    name = "entropy"
    description = "searches the range of least KL divergence (TensorRT-style), per end for asymmetric schemas"

    def choose_ranges(
        self,
        stats: Sequence[TensorStats],
        *,
        bitwidth: int,
        schema: QuantizationSchema,
        options: CalibrationOptions,
    ) -> list[tuple[float, float]]:
        # the tensors whose full range already has a step finer than a bin are not searched
        out: list[tuple[float, float] | None] = [trivial_range(s) for s in stats]
        todo = [i for i, r in enumerate(out) if r is None]
        if todo:
            lo = [min(stats[i].min, 0.0) for i in todo]
            hi = [max(stats[i].max, 0.0) for i in todo]
            full = CandidateGrids.from_ranges(schema, bitwidth, lo, hi, steps=options.steps)
            for i, scale in zip(todo, full.scale.tolist(), strict=True):
                if scale < stats[i].width:
                    out[i] = (stats[i].min, stats[i].max)
        searched = [i for i, r in enumerate(out) if r is None]
        chosen = [stats[i] for i in searched]
        cost = KlOfMany(chosen)  # every tensor's candidates scored together
        for i, r in zip(
            searched, search_ranges(chosen, schema, bitwidth, cost, steps=options.steps), strict=True
        ):
            out[i] = r
        return [r for r in out if r is not None]


@hookimpl
def register_calibration_methods() -> list[CalibrationMethod]:
    return [Entropy()]
