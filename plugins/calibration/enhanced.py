"""enhanced: the SDK's TF-enhanced quantizer (``--act_quantizer enhanced`` / ``--param_quantizer enhanced``).

The SDK describes it only as "an algorithm to determine optimal range ... useful for quantizing models
that have long tails".  Qualcomm's open-source AIMET publishes its TF-enhanced analyzer: a grid search
over candidate (step, offset) pairs -- 17 steps from 1/16 to 17/16 of the min-max step times 21 offsets
spread over the integer range, each candidate cut back to the observed range; for symmetric encodings
100 steps up to the min-max one -- scored by rounding noise plus 3 x clipping noise.  This method
uses that candidate set and weighting, scored with opendlc's histogram model on the grid the schema
really produces.  ``sqnr`` searches the same objective more finely.
"""

from __future__ import annotations

import numpy as np

from opendlc.calibration import CalibrationMethod, CalibrationOptions
from opendlc.calibration_search import CandidateGrids, Intervals, expected_noise, trivial_range
from opendlc.hookspecs import hookimpl
from opendlc.observers import TensorStats
from opendlc.schemas import QuantizationSchema

CLIP_WEIGHT = 3.0
STEP_FRACTIONS = np.arange(1, 18) / 16.0  # 1/16 .. 17/16 of the min-max step
OFFSET_CANDIDATES = 21
SYMMETRIC_FRACTIONS = np.arange(100, 0, -1) / 100.0


def _asymmetric_candidates(lo: float, hi: float, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ranges from (step, offset) pairs, cut back to the observed range [lo, hi]."""
    steps = levels - 1
    step = (hi - lo) / steps
    offset = np.round(lo / step)
    lo_grid, hi_grid = offset * step, (offset + steps) * step
    deltas = STEP_FRACTIONS[:, None] * step
    offsets = np.round(-steps + steps / (OFFSET_CANDIDATES - 1) * np.arange(OFFSET_CANDIDATES))[None, :]
    cand_lo, cand_hi = offsets * deltas, (offsets + steps) * deltas
    # candidates that cover the whole observed range are skipped: the min-max candidate beats them
    keep = ~((cand_lo < lo_grid) & (cand_hi > hi_grid))
    cand_lo = np.maximum(cand_lo, lo_grid)[keep]
    cand_hi = np.minimum(cand_hi, hi_grid)[keep]
    pairs = np.unique(np.stack([cand_lo, cand_hi], axis=1), axis=0)
    pairs = pairs[pairs[:, 1] > pairs[:, 0]]
    # the observed range first: ties keep it
    return np.concatenate(([lo], pairs[:, 0])), np.concatenate(([hi], pairs[:, 1]))


class Enhanced(CalibrationMethod):
    name = "enhanced"
    description = "the SDK's TF-enhanced range: (step, offset) grid search, rounding + 3 x clipping noise"

    def choose_range(
        self, stats: TensorStats, *, bitwidth: int, schema: QuantizationSchema, options: CalibrationOptions
    ) -> tuple[float, float]:
        trivial = trivial_range(stats)
        if trivial is not None:
            return trivial
        lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
        steps = options.steps if schema.symmetric else None
        if schema.symmetric or lo == 0.0 or hi == 0.0:
            cand_lo, cand_hi = lo * SYMMETRIC_FRACTIONS, hi * SYMMETRIC_FRACTIONS
        else:
            full = schema.encode(lo, hi, bitwidth, steps=steps)
            cand_lo, cand_hi = _asymmetric_candidates(lo, hi, full.qmax - full.qmin + 1)
        grids = CandidateGrids.from_ranges(schema, bitwidth, cand_lo, cand_hi, steps=steps)
        noise = expected_noise(Intervals.of(stats), grids, clip_weight=CLIP_WEIGHT)
        best = int(np.argmin(noise))
        return float(grids.lo[best]), float(grids.hi[best])


@hookimpl
def register_calibration_methods() -> list[CalibrationMethod]:
    return [Enhanced()]
