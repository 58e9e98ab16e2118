"""The ``htp`` graph preparer: Qualcomm's HTP compiler (from onnxruntime-qnn) makes the context binary."""

from __future__ import annotations

from opendlc.hookspecs import hookimpl
from opendlc.htp.context import compile_context
from opendlc.htp.qnn import describe_target, library_versions, provider_options
from opendlc.prepare import GraphPreparer, PreparedRecord, PrepareTarget


class HtpPreparer(GraphPreparer):
    name = "htp"
    description = "HTP context binary for a SoC or an HTP architecture (QNN HTP backend via onnxruntime-qnn)"
    backend = "HTP"

    def prepare(self, model: bytes, target: PrepareTarget) -> PreparedRecord:
        options = provider_options(target)
        compiled = compile_context(model, options, what=f"preparation for {describe_target(target)}")
        return PreparedRecord(
            data=compiled.binary,
            info={
                "graph": compiled.graph,
                "library": {**library_versions(), "qnn_build": compiled.sdk_version},
                "compiled_for": compiled.compiled_for,
                # nodes outside a DequantizeLinear -> op -> QuantizeLinear group run unquantized
                "unquantized_ops": [{"name": n, "op_type": t} for n, t in compiled.unquantized],
                # the session options of a run: soc/arch, VTCM, optimisation mode, fp16 (backend path aside)
                "provider_options": {k: v for k, v in options.items() if k != "backend_path"},
            },
        )


@hookimpl
def register_graph_preparers() -> list[GraphPreparer]:
    return [HtpPreparer()]
