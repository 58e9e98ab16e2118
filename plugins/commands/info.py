"""``opendlc info``: what a container (or ONNX model) holds -- the snpe-dlc-info analogue."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import typer

from opendlc import container as dlc
from opendlc.hookspecs import hookimpl
from opendlc.tables import console, print_table


def describe(c: dlc.Container) -> dict[str, Any]:
    """Everything ``info`` shows, as data."""
    params, nbytes = dlc.parameter_summary(c.model)
    io = dlc.graph_io(c.model)
    opset = {o.domain or "ai.onnx": o.version for o in c.model.opset_import}
    return {
        "path": str(c.path) if c.path else None,
        "graph": io["name"],
        "opsets": opset,
        "inputs": io["inputs"],
        "outputs": io["outputs"],
        "op_counts": dict(Counter(n.op_type for n in c.model.graph.node).most_common()),
        "nodes": len(c.model.graph.node),
        "parameters": params,
        "parameter_bytes": nbytes,
        "quantized": c.quantized,
        "encodings": len(c.encodings) if c.encodings else 0,
        "overrides": len(c.overrides) if c.overrides else 0,
        "quantizer": c.encodings.meta.get("quantizer") if c.encodings else None,
        "records": [{"id": r.id, "bytes": len(r.data), **r.info} for r in c.records],
    }


def info(
    model: Path = typer.Argument(..., help="An opendlc container (.dlc) or an ONNX model."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Show a model's inputs, outputs, ops, parameters, encodings and cache records."""
    d = describe(dlc.load(model))
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    console.print(f"[bold]{model}[/bold]  graph '{d['graph']}'  opsets {d['opsets']}")
    print_table(
        "Inputs", ["name", "shape", "dtype"], [(i["name"], i["shape"], i["dtype"]) for i in d["inputs"]]
    )
    print_table(
        "Outputs", ["name", "shape", "dtype"], [(o["name"], o["shape"], o["dtype"]) for o in d["outputs"]]
    )
    print_table("Ops", ["op type", "count"], list(d["op_counts"].items()) + [("total", d["nodes"])])
    print_table(
        "Summary",
        ["what", "value"],
        [
            ("parameters", f"{d['parameters']:,}"),
            ("parameter bytes", f"{d['parameter_bytes']:,}"),
            ("quantized", "yes" if d["quantized"] else "no"),
            ("encodings", d["encodings"]),
            ("stored overrides", d["overrides"]),
            ("cache records", len(d["records"])),
        ],
    )
    if d["records"]:
        print_table(
            "Cache records",
            ["id", "SoC", "soc_model", "arch", "VTCM MB", "bytes"],
            [
                (r["id"], r.get("soc"), r.get("soc_model"), r.get("arch"), r.get("vtcm_mb"), r["bytes"])
                for r in d["records"]
            ],
        )


@hookimpl
def register_commands(app: typer.Typer) -> None:
    app.command("info")(info)
