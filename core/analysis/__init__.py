"""Quantization analysis: which layers hurt a quantized model's output, measured and shown."""

from opendlc.analysis.api import analyze
from opendlc.analysis.report import Report

__all__ = ["Report", "analyze"]
