"""``opendlc convert``: an ONNX model into an opendlc container, with imported encodings."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import onnx
import typer
from typer.core import TyperCommand

from opendlc import container as dlc
from opendlc.cli.logging_options import DEBUG3, VERBOSE
from opendlc.encodings import load_encodings_file
from opendlc.errors import UsageError
from opendlc.hookspecs import hookimpl
from opendlc.model_edit import set_input_shapes
from opendlc.qdq_import import extract_qdq

log = logging.getLogger("opendlc.convert")


def convert_model(
    model_path: Path,
    output: Path | None = None,
    overrides_path: Path | None = None,
    input_dims: dict[str, list[int]] | None = None,
) -> Path:
    """Import ``model_path`` (ONNX, or a container) into a container; return where it was written."""
    source = dlc.load(model_path)
    log.log(
        VERBOSE,
        "read %s: %d nodes, %d initializers, opsets %s",
        model_path,
        len(source.model.graph.node),
        len(source.model.graph.initializer),
        {o.domain or "ai.onnx": o.version for o in source.model.opset_import},
    )
    output = output or model_path.with_suffix(".dlc")
    if output.resolve() == model_path.resolve():
        raise UsageError(f"{output}: the output would overwrite the input; give another -o")
    model, qdq = extract_qdq(source.model)
    if input_dims:
        model = set_input_shapes(model, input_dims)
        log.log(VERBOSE, "pinned input shapes: %s", input_dims)
    overrides = source.overrides
    if qdq.tensors:
        log.info("imported %d encodings from QuantizeLinear/DequantizeLinear pairs", len(qdq))
        overrides = qdq if overrides is None else _merged(overrides, qdq)
    if overrides_path is not None:
        from_file = load_encodings_file(str(overrides_path))
        known = _tensor_names(model)
        unknown = [n for n in from_file.tensors if n not in known]
        if unknown:
            log.warning(
                "%s: %d encodings name tensors the model does not have: %s",
                overrides_path,
                len(unknown),
                ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""),
            )
        overrides = from_file if overrides is None else _merged(overrides, from_file)
        log.info("imported %d encodings from %s", len(from_file), overrides_path)
    for enc in overrides.tensors.values() if overrides else []:
        log.log(DEBUG3, "override %s (%s, from %s): %s", enc.name, enc.kind, enc.source, enc.encodings)
    dlc.check_model(model, str(model_path))
    out = dlc.Container(
        model=model,
        encodings=source.encodings,
        overrides=overrides,
        records=source.records,
        meta={**source.meta, "source": model_path.name},
    )
    out.write(output)
    log.log(VERBOSE, "wrote %s (%d bytes)", output, output.stat().st_size)
    return output


def _merged(base, newer):  # newer wins
    base.tensors.update(newer.tensors)
    return base


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {i.name for i in g.input} | {i.name for i in g.initializer}
    for n in g.node:
        names.update(n.output)
    return names


def parse_input_dims(values: list[str]) -> dict[str, list[int]]:
    dims: dict[str, list[int]] = {}
    for v in values:
        name, _, shape = v.rpartition(" ") if " " in v else v.rpartition("=")
        try:
            dims[name] = [int(d) for d in shape.split(",")]
        except ValueError:
            raise UsageError(f"--input_dim '{v}': expected NAME 1,3,224,224") from None
        if not name or any(d <= 0 for d in dims[name]):
            raise UsageError(f"--input_dim '{v}': expected NAME 1,3,224,224 with positive dimensions")
    return dims


_DIMS = re.compile(r"^\d+(,\d+)*$")


class _ConvertCommand(TyperCommand):
    """Takes the SDK converter's two-word form ``--input_dim NAME 1,3,224,224`` as well as one word."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        joined: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            flag, eq, value = arg.partition("=")
            if flag in ("--input_dim", "-d"):
                if eq and " " not in value and i + 1 < len(args) and _DIMS.match(args[i + 1]):
                    joined.append(f"{flag}={value} {args[i + 1]}")
                    i += 2
                    continue
                if not eq and i + 2 < len(args) and " " not in args[i + 1] and _DIMS.match(args[i + 2]):
                    joined += [flag, f"{args[i + 1]} {args[i + 2]}"]
                    i += 3
                    continue
            joined.append(arg)
            i += 1
        return super().parse_args(ctx, joined)


def convert(
    model: Path = typer.Argument(..., help="The ONNX model (or an opendlc container) to import."),
    output: Path = typer.Option(None, "--output_path", "-o", help="Container to write (default: MODEL.dlc)."),
    quantization_overrides: Path = typer.Option(
        None,
        "--quantization_overrides",
        help="AIMET/QAIRT encodings file (0.6.1 or 1.0.0) to store as overrides.",
    ),
    input_dim: list[str] = typer.Option(
        [], "--input_dim", "-d", help="Pin an input's shape: NAME 1,3,224,224 (repeatable)."
    ),
) -> None:
    """Import an ONNX model into an opendlc container (QDQ pairs and an overrides file become encodings)."""
    written = convert_model(model, output, quantization_overrides, parse_input_dims(input_dim) or None)
    typer.echo(f"wrote {written}")


@hookimpl
def register_commands(app: typer.Typer) -> None:
    app.command("convert", cls=_ConvertCommand)(convert)
