"""HTP context binaries: compiling a QDQ model into one, and running one on the HTP emulator.

Offline preparation writes an EPContext model (a wrapper ONNX graph whose ``EPContext`` nodes name the
QNN graphs) beside the context binary.  opendlc keeps the binary as the cache record's bytes and the
wrapper as a small JSON description in the manifest, so the wrapper can be rebuilt -- with the binary
embedded to run it, or referring to a file to export it -- without preparing again.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from opendlc.htp.qnn import HtpError, compile_to_context, create_session

MS_DOMAIN = "com.microsoft"
_SKIP_ATTRS = {"ep_cache_context", "embed_mode"}


@dataclass
class CompiledContext:
    """A context binary and the EPContext wrapper that loads it."""

    binary: bytes
    graph: dict[str, Any]  # {"inputs": [...], "outputs": [...], "nodes": [...]} of the wrapper
    sdk_version: str  # the QNN SDK build that compiled it (EPContext ``ep_sdk_version``)
    compiled_for: dict[str, Any]  # settings the compiler embedded in the binary (informational)
    unquantized: list[tuple[str, str]]  # (node, op type) HTP runs outside a quantized group


def compile_context(model: bytes, options: dict[str, str], *, what: str) -> CompiledContext:
    """Compile a serialized QDQ model with the HTP backend (``options`` from ``provider_options``)."""
    with tempfile.TemporaryDirectory(prefix="opendlc-htp-") as d:
        ctx = Path(d, "ctx.onnx")
        unquantized = compile_to_context(model, options, str(ctx), what=what)
        if not ctx.is_file():
            raise HtpError(f"HTP {what}: onnxruntime wrote no EPContext model")
        wrapper = onnx.load(str(ctx), load_external_data=False)
        others = sorted({n.op_type for n in wrapper.graph.node if n.op_type != "EPContext"})
        if others:  # cannot happen with CPU fallback disabled; checked so a record is never partial
            raise HtpError(f"HTP {what}: part of the graph stayed outside HTP ({', '.join(others)})")
        files = sorted(
            {
                a.s.decode()
                for n in wrapper.graph.node
                for a in n.attribute
                if a.name == "ep_cache_context" and a.s
            }
        )
        if len(files) != 1:
            raise HtpError(f"HTP {what}: expected one context binary, onnxruntime wrote {len(files)}")
        binary = Path(d, files[0]).read_bytes()
    sdk = next(
        (a.s.decode() for n in wrapper.graph.node for a in n.attribute if a.name == "ep_sdk_version"), ""
    )
    # nodes onnxruntime inserted itself (layout transposes on integer data, ...) are not the model's
    names = {n.name for n in onnx.load_model_from_string(model).graph.node}
    unquantized = [(n, t) for n, t in unquantized if n in names]
    return CompiledContext(binary, describe_wrapper(wrapper), sdk, compiled_settings(binary), unquantized)


def describe_wrapper(wrapper: onnx.ModelProto) -> dict[str, Any]:
    """The wrapper graph as JSON-able data (without the binary)."""

    def io(v: onnx.ValueInfoProto) -> dict[str, Any]:
        t = v.type.tensor_type
        return {
            "name": v.name,
            "shape": [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim],
            "dtype": np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name,
        }

    nodes = []
    for n in wrapper.graph.node:
        attrs: dict[str, Any] = {}
        for a in n.attribute:
            if a.name in _SKIP_ATTRS:
                continue
            value = helper.get_attribute_value(a)
            attrs[a.name] = value.decode() if isinstance(value, bytes) else value
        main = next((a.i for a in n.attribute if a.name == "main_context"), 1)
        nodes.append(
            {"name": n.name, "inputs": list(n.input), "outputs": list(n.output), "main": bool(main), **attrs}
        )
    return {
        "inputs": [io(v) for v in wrapper.graph.input],
        "outputs": [io(v) for v in wrapper.graph.output],
        "nodes": nodes,
    }


def epcontext_model(
    graph: dict[str, Any], binary: bytes | None = None, *, binary_file: str | None = None
) -> onnx.ModelProto:
    """Rebuild the EPContext wrapper: ``binary`` embedded, or ``binary_file`` (relative path) named."""
    if (binary is None) == (binary_file is None):
        raise ValueError("give the binary or the name of its file")
    nodes = []
    for spec in graph["nodes"]:
        attrs = {k: v for k, v in spec.items() if k not in ("name", "inputs", "outputs", "main")}
        if spec["main"]:
            attrs["embed_mode"] = 1 if binary is not None else 0
            attrs["ep_cache_context"] = binary if binary is not None else binary_file.encode()  # type: ignore[union-attr]
        nodes.append(
            helper.make_node(
                "EPContext", spec["inputs"], spec["outputs"], name=spec["name"], domain=MS_DOMAIN, **attrs
            )
        )

    def vi(d: dict[str, Any]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(
            d["name"], helper.np_dtype_to_tensor_dtype(np.dtype(d["dtype"])), d["shape"]
        )

    g = helper.make_graph(
        nodes, "htp_context", [vi(d) for d in graph["inputs"]], [vi(d) for d in graph["outputs"]]
    )
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)]
    )
    model.ir_version = 8
    return model


# Settings the HTP compiler writes into the binary ("key=value;" text).  Read for the record and for
# checks that a cache really targets what was asked; absent keys are simply left out.
_SETTINGS = {
    "soc": (r"soc_type=([A-Za-z0-9_]+);", str),
    "dsp_arch": (r";arch=(\d+);", int),
    "vtcm_bytes": (r"vtcm_size=(\d+);", int),
    "optimization_level": (r"O=(\d+);seq_sf_algo_selector", int),
    "hvx_threads": (r"[;\x00]hvx_threads=(\d+);", int),
    "dlbc": (r"enable_dlbc=(\w+);", lambda s: s == "true"),
}


def compiled_settings(binary: bytes) -> dict[str, Any]:
    text = binary.decode("latin-1")
    found: dict[str, Any] = {}
    for key, (pattern, convert) in _SETTINGS.items():
        m = re.search(pattern, text)
        if m:
            found[key] = convert(m.group(1))
    return found


class EmulatorSession:
    """A cache record running on the HTP emulator (onnxruntime-qnn's x86-64 HTP backend)."""

    def __init__(self, graph: dict[str, Any], binary: bytes, options: dict[str, str], *, what: str) -> None:
        model = epcontext_model(graph, binary).SerializeToString()
        self.session = create_session(model, options, what=what)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.what = what

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(self.output_names, feeds)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise HtpError(f"HTP {self.what}: the emulator failed: {first}") from None
        return dict(zip(self.output_names, values, strict=True))
