"""``opendlc analyze``: which layers of a quantized model hurt its output -- an HTML report, its JSON twin,
and an overrides file that keeps the worst layers at higher precision."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from opendlc import container as dlc
from opendlc.analysis.files import analyze_to_files, check_report_path
from opendlc.cli.logging_options import state as log_state
from opendlc.hookspecs import hookimpl


def default_report_path(model: Path) -> Path:
    """``<model stem>_report.html`` beside the model."""
    return model.with_name(f"{model.stem}_report.html")


def analyze(
    model: Path = typer.Argument(..., help="A quantized container (a float model is quantized first)."),
    input_list: Path = typer.Option(
        ..., "--input_list", "-l", help="Input list of the samples (snpe-net-run's format)."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="The HTML report (default <model>_report.html); JSON twin beside it."
    ),
    heldout_list: Path | None = typer.Option(
        None, "--heldout_list", help="Input list for sensitivity and verdict (default: the first samples)."
    ),
    sensitivity_samples: int = typer.Option(
        4, "--sensitivity_samples", help="Samples per sensitivity and verdict run."
    ),
    candidates: int = typer.Option(
        12,
        "--candidates",
        help="Worst activations by each per-layer measure given a sensitivity run (0: every one).",
    ),
    max_keep: int = typer.Option(4, "--max_keep", help="At most this many layers in the verdict."),
    use_native_input_files: bool = typer.Option(
        False, "--use_native_input_files", help="Raw files hold the model's own input types, not float32."
    ),
) -> None:
    """Analyse a quantized model: per-layer SQNR, sensitivity, histograms, encodings and a verdict with
    a measured gain and an overrides file."""
    html = output or default_report_path(model)
    check_report_path(html)
    verbose = log_state.settings.console_level() <= logging.INFO
    analyze_to_files(
        dlc.load(model),
        input_list,
        html,
        heldout_list=heldout_list,
        native=use_native_input_files,
        sensitivity_samples=sensitivity_samples,
        candidates=candidates,
        max_keep=max_keep,
        progress=verbose,
        tables=verbose,
        name=str(model),
    )


@hookimpl
def register_commands(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
