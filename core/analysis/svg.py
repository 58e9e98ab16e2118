"""Small inline SVG pictures for the report: an activation's histogram with its encoding range, and the
SQNR of every activation through the network.  Plain markup, no scripts, no external assets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

from opendlc.observers import TensorStats

DISPLAY_BINS = 96


@dataclass
class DisplayHistogram:
    """A histogram re-binned for display over [lo, hi], which covers the data and the encoding range."""

    lo: float
    hi: float
    counts: list[int]
    data_min: float
    data_max: float
    enc_min: float | None
    enc_max: float | None
    clipped_fraction: float  # of the observed values outside the encoding range
    step: float = 0.0  # the encoding's scale: values within half a step of its range are not clipped

    def to_json(self) -> dict:
        return dict(self.__dict__)


def display_histogram(
    stats: TensorStats,
    enc_min: float | None,
    enc_max: float | None,
    step: float = 0.0,
    bins: int = DISPLAY_BINS,
) -> DisplayHistogram | None:
    """``step``: the encoding's scale; values within half a step of its range round into it anyway, so
    only values beyond that count as clipped."""
    if not stats.has_histogram:
        return None
    centers, counts = stats.occupied()
    lo, hi = stats.min, stats.max
    if enc_min is not None and enc_max is not None:
        lo, hi = min(lo, enc_min), max(hi, enc_max)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.02
    lo, hi = lo - pad, hi + pad
    idx = np.clip(((centers - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
    shown = np.bincount(idx, weights=counts, minlength=bins)
    total = float(counts.sum())
    clipped = 0.0
    if enc_min is not None and enc_max is not None and total > 0:
        beyond = (centers < enc_min - step / 2) | (centers > enc_max + step / 2)
        clipped = float(counts[beyond].sum()) / total
    return DisplayHistogram(
        float(lo),
        float(hi),
        [int(round(c)) for c in shown],
        float(stats.min),
        float(stats.max),
        enc_min,
        enc_max,
        clipped,
        step,
    )


def _num(v: float) -> str:
    return f"{v:.4g}"


def histogram_svg(h: DisplayHistogram, title: str, width: int = 300, height: int = 96) -> str:
    """The histogram (log counts) in grey, values outside the encoding range in red, the encoding range
    as a blue band with its ends marked."""
    top, bottom, left, right = 4, 16, 2, 2
    pw, ph = width - left - right, height - top - bottom
    n = len(h.counts)
    peak = math.log10(1 + max(h.counts)) or 1.0

    def x(v: float) -> float:
        return left + (v - h.lo) / (h.hi - h.lo) * pw

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="hist" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img"><title>{escape(title)}</title>'
    ]
    if h.enc_min is not None and h.enc_max is not None:
        x0, x1 = x(h.enc_min), x(h.enc_max)
        parts.append(
            f'<rect class="enc" x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 1):.1f}" height="{ph}" '
            'fill="#dbe8fb"/>'
            + "".join(
                f'<line x1="{v:.1f}" x2="{v:.1f}" y1="{top}" y2="{top + ph}" stroke="#1f5fbf" '
                'stroke-width="1.5"/>'
                for v in (x0, x1)
            )
        )
    inside, outside = [], []  # one path each: a few KB per picture even for hundreds of pictures
    base = top + ph
    for i, c in enumerate(h.counts):
        if not c:
            continue
        b0 = h.lo + (h.hi - h.lo) * i / n
        b1 = h.lo + (h.hi - h.lo) * (i + 1) / n
        bh = ph * math.log10(1 + c) / peak
        w = max(x(b1) - x(b0), 0.8)
        out = (
            h.enc_min is not None
            and h.enc_max is not None
            and (b1 <= h.enc_min - h.step / 2 or b0 >= h.enc_max + h.step / 2)
        )
        (outside if out else inside).append(f"M{x(b0):.1f} {base - bh:.1f}h{w:.1f}V{base}h{-w:.1f}z")
    if inside:
        parts.append(f'<path class="bars" d="{"".join(inside)}" fill="#555"/>')
    if outside:
        parts.append(f'<path class="clipped" d="{"".join(outside)}" fill="#d33"/>')
    parts.append(
        f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#999"/>'
        f'<text x="{left}" y="{height - 3}" font-size="10" fill="#333">{_num(h.data_min)}</text>'
        f'<text x="{left + pw}" y="{height - 3}" font-size="10" fill="#333" text-anchor="end">'
        f"{_num(h.data_max)}</text>"
    )
    if h.lo < 0 < h.hi:
        parts.append(
            f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top + ph}" y2="{top + ph + 3}" stroke="#333"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def sqnr_profile_svg(
    names: Sequence[str],
    sqnr: Sequence[float],
    own: Sequence[float],
    width: int = 960,
    height: int = 240,
) -> str:
    """SQNR against FP32 of every activation in graph order (solid), and of each activation's own
    encoding alone (dots): where the solid line drops, the error enters."""
    left, right, top, bottom = 40, 10, 10, 24
    pw, ph = width - left - right, height - top - bottom
    finite = [v for v in [*sqnr, *own] if math.isfinite(v)]
    hi = max(finite, default=60.0)
    lo = min(finite, default=0.0)
    hi = math.ceil(min(hi, 120.0) / 10) * 10 + 10
    lo = math.floor(max(lo, -20.0) / 10) * 10
    n = max(len(names), 2)

    def xy(i: int, v: float) -> tuple[float, float]:
        v = hi if not math.isfinite(v) or v > hi else max(v, lo)
        return left + pw * i / (n - 1), top + ph * (hi - v) / (hi - lo)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="profile" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img"><title>SQNR of each activation against FP32, '
        "in graph order</title>"
    ]
    for v in range(int(lo), int(hi) + 1, 10):
        _, y = xy(0, v)
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{left - 4}" y="{y + 3:.1f}" font-size="10" text-anchor="end" fill="#555">{v}</text>'
        )
    parts.append(
        f'<text x="{left}" y="{height - 6}" font-size="10" fill="#555">input</text>'
        f'<text x="{left + pw}" y="{height - 6}" font-size="10" text-anchor="end" fill="#555">output</text>'
        f'<text x="{left + pw / 2}" y="{height - 6}" font-size="10" text-anchor="middle" fill="#555">'
        "activations in graph order (dB)</text>"
    )
    for i, (name, v) in enumerate(zip(names, own, strict=True)):
        if math.isfinite(v):
            x, y = xy(i, v)
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="#e08a00"><title>{escape(name)}: own '
                f"encoding {v:.1f} dB</title></circle>"
            )
    points = " ".join("{:.1f},{:.1f}".format(*xy(i, v)) for i, v in enumerate(sqnr))
    parts.append(f'<polyline points="{points}" fill="none" stroke="#1f5fbf" stroke-width="1.5"/>')
    for i, (name, v) in enumerate(zip(names, sqnr, strict=True)):
        x, y = xy(i, v)
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#1f5fbf"><title>{escape(name)}: '
            f"{v:.1f} dB</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)
