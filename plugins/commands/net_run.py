"""``opendlc net-run``: snpe-net-run's options; the CPU (float or quantized simulation) or HTP emulator."""

from __future__ import annotations

from pathlib import Path

import typer

from opendlc.hookspecs import hookimpl
from opendlc.netrun import net_run as run_container


def net_run(
    container: Path = typer.Option(..., "--container", help="The container (.dlc) or ONNX model to run."),
    input_list: Path = typer.Option(..., "--input_list", help="The input list (snpe-net-run's format)."),
    output_dir: Path = typer.Option(
        Path("output"), "--output_dir", help="Where Result_N folders are written."
    ),
    runtime: str = typer.Option("cpu", "--runtime", help="cpu (onnxruntime) or htp (the HTP emulator)."),
    soc: str = typer.Option(
        None, "--soc", help="With --runtime htp: the SoC whose cache record runs (default sm8650)."
    ),
    set_output_tensors: list[str] = typer.Option(
        [], "--set_output_tensors", help="Comma-separated tensors to write (instead of the graph outputs)."
    ),
    use_native_input_files: bool = typer.Option(
        False, "--use_native_input_files", help="Input files hold the model's own types (not float32)."
    ),
    use_native_output_files: bool = typer.Option(
        False, "--use_native_output_files", help="Write outputs in the model's own types (not float32)."
    ),
) -> None:
    """Run a container over an input list; write Result_N/<tensor>.raw as snpe-net-run does."""
    tensors = [t.strip() for v in set_output_tensors for t in v.split(",") if t.strip()]
    result = run_container(
        container,
        input_list,
        output_dir,
        runtime=runtime.lower(),
        soc=soc,
        output_tensors=tensors,
        native_inputs=use_native_input_files,
        native_outputs=use_native_output_files,
    )
    where = f" (record {result.record})" if result.record else ""
    typer.echo(
        f"ran {result.samples} sample(s) on {result.runtime}{where} in {result.seconds:.1f} s; "
        f"outputs {', '.join(result.files[t] for t in result.outputs)} in {result.output_dir}/Result_*"
    )


@hookimpl
def register_commands(app: typer.Typer) -> None:
    app.command("net-run")(net_run)
