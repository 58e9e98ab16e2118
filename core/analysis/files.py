"""From an input list to the report's files: what `opendlc analyze` and `opendlc quantize --report` run."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from opendlc.analysis.api import analyze
from opendlc.analysis.render import ReportFiles, print_tables, report_paths, write_report
from opendlc.container import Container
from opendlc.errors import UsageError
from opendlc.quant.options import QuantizerOptions
from opendlc.quant_io import calibration_inputs

log = logging.getLogger("opendlc.analysis")


def check_report_path(html: str | os.PathLike[str]) -> None:
    """Fail before any work if the page, its JSON twin or the overrides file cannot be written."""
    for path in report_paths(html):
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise UsageError(f"{path}: cannot write: folder {folder} does not exist")
        if path.is_dir():
            raise UsageError(f"{path}: cannot write: it is a folder")


def analyze_to_files(
    container: Container,
    input_list: str | os.PathLike[str],
    html: str | os.PathLike[str],
    *,
    options: QuantizerOptions | None = None,
    heldout_list: str | os.PathLike[str] | None = None,
    native: bool = False,
    sensitivity_samples: int = 4,
    candidates: int = 12,
    max_keep: int = 4,
    progress: bool = True,
    tables: bool = True,
    name: str | None = None,
) -> ReportFiles:
    """Analyse ``container`` on the samples of ``input_list`` (sensitivity on ``heldout_list`` when
    given) and write the report's files; print the tables unless ``tables`` is false."""
    check_report_path(html)
    inputs = calibration_inputs(container.model, input_list, native=native)
    heldout = None
    if heldout_list is not None:
        heldout = calibration_inputs(container.model, heldout_list, native=native).samples
    report = analyze(
        container,
        inputs.samples,
        options=options,
        heldout=heldout,
        sensitivity_samples=sensitivity_samples,
        candidates=candidates,
        max_keep=max_keep,
        progress=progress,
    )
    if name:
        report.model = name
    files = write_report(report, html)
    if tables:
        print_tables(report)
    log.info("wrote %s and %s", files.html, files.json)
    if files.overrides is not None:
        log.info("wrote %s (apply with opendlc convert --quantization_overrides)", files.overrides)
    return files


# ---- opendlc quantize --report -------------------------------------------------------------------------
def check_quantize_report(html: str | os.PathLike[str], input_list: str | os.PathLike[str] | None) -> None:
    """Before quantizing: the report needs samples, and somewhere to go."""
    if input_list is None:
        raise UsageError("--report analyses the model on the calibration inputs: it needs --input_list")
    check_report_path(html)


def report_after_quantize(container: Container, command: Any, *, progress: bool = True) -> ReportFiles:
    """The report of a model ``opendlc quantize`` just quantized (``command``: its parsed command line)."""
    recorded = container.encodings is not None and container.encodings.meta.get("quantizer")
    return analyze_to_files(
        container,
        command.input_list,
        command.report,
        # a stripped container records no options: the command's are the ones it was quantized with
        options=None if recorded else command.options,
        native=command.use_native_input_files,
        progress=progress,
        tables=progress,
        name=str(command.input_dlc),
    )
