"""``snpe-dlc-graph-prepare`` and ``opendlc graph-prepare``: offline HTP caches stored in the container.

Every option of the SDK tool, in both of its forms (``--opt=value`` and ``--opt value``); the logging
options are taken care of by :func:`opendlc.cli.runner.run`.  The work is done by
:func:`opendlc.htp.prepare_records`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import typer

from opendlc import __version__
from opendlc import container as dlc
from opendlc.cli.runner import run_command
from opendlc.errors import UsageError
from opendlc.htp import HtpPrepareOptions, prepare_records
from opendlc.htp.qdq import parse_buffer_types
from opendlc.input_list import InputSpec, read_input_list
from opendlc.model_edit import graph_inputs
from opendlc.tables import print_table

log = logging.getLogger("opendlc.htp")

_TRUE = {"true", "1", "on", "yes"}
_FALSE = {"false", "0", "off", "no"}


def _flag_value(option: str, value: str | None) -> bool:
    if value is None:
        return False
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise UsageError(f"{option}={value}: expected true or false")


def _comma_list(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def parse_input_dimensions(names: list[str], dims: list[str], graph_name: str) -> dict[str, list[int]]:
    """Pair ``--input_name`` with ``--input_dimensions`` (in order), graph-name prefixes checked."""
    if len(names) != len(dims):
        raise UsageError(
            f"--input_name is given {len(names)} time(s) and --input_dimensions {len(dims)}: "
            "give them in pairs"
        )

    def strip_graph(value: str, option: str) -> str:
        parts = value.strip().split()
        if len(parts) == 2:
            if parts[0] != graph_name:
                raise UsageError(f"{option} '{value}': the model's graph is '{graph_name}', not '{parts[0]}'")
            return parts[1]
        if len(parts) != 1:
            raise UsageError(f"{option} '{value}': expected a name, or \"<graph name> <value>\"")
        return parts[0]

    out: dict[str, list[int]] = {}
    for name, dim in zip(names, dims, strict=True):
        name = strip_graph(name, "--input_name")
        text = strip_graph(dim, "--input_dimensions")
        try:
            shape = [int(d) for d in text.split(",")]
        except ValueError:
            raise UsageError(
                f"--input_dimensions '{dim}': expected comma-separated integers, e.g. 1,224,224,3"
            ) from None
        if any(d <= 0 for d in shape):
            raise UsageError(f"--input_dimensions '{dim}': dimensions must be positive")
        out[name] = shape
    return out


def default_output(input_path: Path) -> Path:
    return input_path.with_name(f"{input_path.stem}_cached.dlc")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"opendlc {__version__} (snpe-dlc-graph-prepare compatible)")
        raise typer.Exit()


def graph_prepare(
    input_dlc: Path = typer.Option(
        ...,
        "--input_dlc",
        help="The quantized container (.dlc) or QDQ ONNX model to prepare.",
        show_default=False,
    ),
    output_dlc: Path = typer.Option(
        None,
        "--output_dlc",
        help="Where to write the container with its cache records (default <input>_cached.dlc).",
    ),
    set_output_tensors: list[str] = typer.Option(
        [], "--set_output_tensors", metavar="T1,T2", help="Comma-separated tensors to output as well."
    ),
    set_output_layers: list[str] = typer.Option(
        [],
        "--set_output_layers",
        metavar="L1,L2",
        help="Comma-separated layers whose outputs are output as well.",
    ),
    input_list: Path = typer.Option(
        None, "--input_list", help="An input list; only its #layer / %tensor output lines are used."
    ),
    htp_socs: str = typer.Option(
        None,
        "--htp_socs",
        metavar="SOC1,SOC2",
        help="Comma-separated SoCs to prepare for (default sm8650), e.g. sm8350,sm8650.",
    ),
    htp_archs: str = typer.Option(
        None,
        "--htp_archs",
        metavar="V68,V73",
        help="Comma-separated HTP architectures (e.g. v68,v73); excludes --htp_socs.",
    ),
    vtcm_override: int = typer.Option(
        None, "--vtcm_override", help="VTCM size in MB for the SoCs' caches (0 = the SoC's maximum)."
    ),
    optimization_level: int = typer.Option(
        2, "--optimization_level", help="HTP graph optimisation level: 1, 2 or 3."
    ),
    optimization_preset: int = typer.Option(
        None, "--optimization_preset", help="Optimisation preset (>= 0), with --optimization_level 3."
    ),
    buffer_data_type: list[str] = typer.Option(
        [],
        "--buffer_data_type",
        metavar="NAME=TYPE",
        help="NAME=float32|fixedPoint8|fixedPoint16 for an IO buffer (repeatable).",
    ),
    overwrite_cache_records: bool = typer.Option(
        False, "--overwrite_cache_records", help="Regenerate records that already match a requested target."
    ),
    use_float_io: bool = typer.Option(
        False, "--use_float_io", help="Deprecated: float32 IO buffers (prefer --buffer_data_type)."
    ),
    htp_dlbc: str = typer.Option(
        None, "--htp_dlbc", metavar="true|false", help="Deep learning bandwidth compression: true or false."
    ),
    num_hvx_threads: int = typer.Option(None, "--num_hvx_threads", help="HVX threads to reserve (> 0)."),
    input_name: list[str] = typer.Option(
        [], "--input_name", metavar="NAME", help="An input to re-shape (with --input_dimensions)."
    ),
    input_dimensions: list[str] = typer.Option(
        [],
        "--input_dimensions",
        metavar="D1,D2,...",
        help="The new dimensions of the matching --input_name, e.g. 1,224,224,3.",
    ),
    memorymapped_buffer_hint: str = typer.Option(
        None,
        "--memorymapped_buffer_hint",
        metavar="true|false",
        help="Memory-mapped buffers hint: true or false.",
    ),
    udo_package_path: list[str] = typer.Option(
        [],
        "--udo_package_path",
        metavar="PATHS",
        help="UDO package(s): registration libraries or folders, comma-separated.",
    ),
    jobs: int = typer.Option(None, "--jobs", help="Worker processes (default: one per core)."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """Prepare a quantized model offline for Qualcomm HTP: one cache record per SoC or architecture."""
    if use_float_io:
        log.warning("--use_float_io is deprecated: use --buffer_data_type NAME=float32")
    source = dlc.load(input_dlc)
    output = output_dlc or default_output(input_dlc)
    if output.resolve() == input_dlc.resolve():
        raise UsageError(f"{output}: the output would overwrite the input; give another --output_dlc")
    layers, tensors = _comma_list(set_output_layers), _comma_list(set_output_tensors)
    if input_list is not None:
        # only the names of the inputs matter here: sample lines are parsed, their files not read
        names = [InputSpec(v.name, (), np.dtype(np.float32)) for v in graph_inputs(source.model)]
        lst = read_input_list(input_list, names, check_files=False)
        layers += lst.output_layers
        tensors += lst.output_tensors
    options = HtpPrepareOptions(
        optimization_level=optimization_level,
        optimization_preset=optimization_preset,
        buffer_data_types=parse_buffer_types(buffer_data_type),
        use_float_io=use_float_io,
        htp_dlbc=_flag_value("--htp_dlbc", htp_dlbc),
        num_hvx_threads=num_hvx_threads,
        memorymapped_buffer_hint=_flag_value("--memorymapped_buffer_hint", memorymapped_buffer_hint),
        input_dimensions=parse_input_dimensions(input_name, input_dimensions, source.model.graph.name),
        output_tensors=tensors,
        output_layers=layers,
        udo_package_path=_comma_list(udo_package_path),
        vtcm_override=vtcm_override,
        jobs=jobs,
    )
    report = prepare_records(
        source, socs=htp_socs, archs=htp_archs, overwrite=overwrite_cache_records, options=options
    )
    report.container.meta["prepared_from"] = input_dlc.name
    report.container.write(output)
    rows = []
    for r in report.results:
        info = r.record.info
        built = info.get("compiled_for", {})
        vtcm = built.get("vtcm_bytes", 0) // (1 << 20) if built.get("vtcm_bytes") else info.get("vtcm_mb")
        rows.append(
            (
                r.record_id,
                info.get("soc") or "-",
                info.get("soc_model") if info.get("soc_model") is not None else "-",
                info.get("arch"),
                vtcm,
                info.get("optimization_level"),
                r.status,
                f"{len(r.record.data):,}",
                f"{r.seconds:.1f}" if r.status != "skipped" else "-",
            )
        )
    print_table(
        "HTP cache records",
        ["record", "SoC", "soc_model", "arch", "VTCM MB", "opt level", "status", "bytes", "seconds"],
        rows,
    )
    typer.echo(f"wrote {output}")


def main(prog: str, argv: list[str]) -> int:
    """Run ``snpe-dlc-graph-prepare`` (named ``prog``) on ``argv``; return the exit status."""
    return run_command(graph_prepare, prog, argv)
