"""onnxruntime's QNN execution provider (the ``onnxruntime-qnn`` package) as opendlc uses it.

The package ships Qualcomm's HTP backend (``libQnnHtp.so`` with the offline graph compiler) and the QNN IR
backend.  One ``InferenceSession`` with the HTP backend either compiles a QDQ model into a context binary
(``ep.context_*`` session entries) or, given an EPContext model, runs that binary on the HTP emulator that
the x86-64 backend contains.  CPU fallback is always disabled: a node HTP cannot take fails the session,
and the failure names the nodes (read from onnxruntime's log).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opendlc.errors import NotAvailableError, OpendlcError
from opendlc.htp._native import captured_native_output
from opendlc.plugin_manager import get_plugin_manager
from opendlc.prepare import PrepareTarget

log = logging.getLogger("opendlc.htp")

EP_NAME = "QNNExecutionProvider"
INSTALL_HINT = "pip install onnxruntime-qnn (Qualcomm's HTP libraries; Linux x86-64 and Windows only)"
# onnxruntime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
_QUIET, _VERBOSE = 3, 0
_KEEP_REQUANTIZATION = ["DoubleQDQPairsRemover"]


class HtpError(OpendlcError):
    """HTP preparation or execution failed."""


class HtpRejectedNodes(HtpError):
    """The HTP backend does not take some nodes (and CPU fallback is disabled)."""

    def __init__(self, message: str, nodes: list[RejectedNode]) -> None:
        super().__init__(message)
        self.nodes = nodes

    def __reduce__(self) -> tuple:  # travels back from worker processes
        return (type(self), (str(self), self.nodes))


@dataclass(frozen=True)
class RejectedNode:
    name: str
    op_type: str
    reason: str


# ---- the libraries ---------------------------------------------------------------------------------
def _qnn_module() -> Any:
    try:
        import onnxruntime_qnn
    except ImportError:
        raise NotAvailableError(f"the HTP libraries are not installed: {INSTALL_HINT}") from None
    if not Path(onnxruntime_qnn.get_qnn_htp_path()).is_file():
        raise NotAvailableError(
            f"onnxruntime-qnn has no HTP backend library for this platform ({INSTALL_HINT})"
        )
    return onnxruntime_qnn


def library_dir() -> Path:
    return Path(_qnn_module().get_library_path()).parent


def htp_backend_path() -> str:
    return str(_qnn_module().get_qnn_htp_path())


def ir_backend_path() -> str:
    path = library_dir() / ("QnnIr.dll" if os.name == "nt" else "libQnnIr.so")
    if not path.is_file():
        raise NotAvailableError(f"onnxruntime-qnn has no QNN IR backend library ({path.name}) here")
    return str(path)


@functools.cache
def ep_devices() -> tuple[Any, ...]:
    """The QNN EP's devices, registering the EP library with onnxruntime once per process."""
    oq = _qnn_module()
    import onnxruntime as ort

    def qnn_devices() -> tuple[Any, ...]:
        return tuple(d for d in ort.get_ep_devices() if d.ep_name == EP_NAME)

    devices = qnn_devices()
    if not devices:  # someone else in this process may have registered it already
        try:
            ort.register_execution_provider_library(EP_NAME, oq.get_library_path())
        except Exception as e:  # a second registration under the same name fails; anything else is real
            if not qnn_devices():
                raise NotAvailableError(f"cannot load the QNN execution provider: {e}") from None
        devices = qnn_devices()
    if not devices:
        raise NotAvailableError(f"the QNN execution provider offers no device ({INSTALL_HINT})")
    return devices


def library_versions() -> dict[str, str]:
    """Versions of what prepares and runs the graphs (the QNN SDK build is read from each record)."""
    import onnxruntime as ort

    oq = _qnn_module()
    info = getattr(oq, "build_and_package_info", None)
    return {
        "onnxruntime": ort.__version__,
        "onnxruntime_qnn": str(getattr(oq, "__version__", "?")),
        "qnn_sdk": str(getattr(info, "qnn_version", "?")),
    }


# ---- provider options ------------------------------------------------------------------------------
def dsp_arch_number(arch: str) -> int:
    """``v75`` -> 75, from the registered HTP architectures."""
    return int(get_plugin_manager().htp_archs.get(arch).dsp_arch)


def provider_options(target: PrepareTarget) -> dict[str, str]:
    """The QNN EP's options that make the HTP backend compile for ``target``.

    A SoC target passes its ``soc_model`` (which fixes the architecture); a bare architecture passes
    ``htp_arch``.  ``target.options`` may carry ``optimization_level`` (1-3) and ``fp16`` (float parts
    of the graph run in float16, the only float HTP computes in; the EP accepts it with a SoC only).
    """
    opts = {
        "backend_path": htp_backend_path(),
        "htp_graph_finalization_optimization_mode": str(int(target.options.get("optimization_level", 2))),
        "offload_graph_io_quantization": "0",  # the graph's IO types are chosen by editing the model
    }
    if target.soc_model is not None:
        opts["soc_model"] = str(target.soc_model)
        # the EP takes the float16 precision mode only together with a soc_model
        opts["enable_htp_fp16_precision"] = "1" if target.options.get("fp16", True) else "0"
    else:
        opts["htp_arch"] = str(dsp_arch_number(target.arch))
    if target.vtcm_mb:
        opts["vtcm_mb"] = str(int(target.vtcm_mb))
    return opts


def describe_target(target: PrepareTarget) -> str:
    return f"{target.soc} ({target.arch})" if target.soc else f"{target.arch}"


# ---- sessions --------------------------------------------------------------------------------------
def _session_options(
    options: Mapping[str, str], *, context_path: str | None, severity: int, config: Mapping[str, str]
) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = severity
    so.add_provider_for_devices(list(ep_devices()[:1]), dict(options))
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for key, value in config.items():
        so.add_session_config_entry(key, value)
    if context_path is not None:
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_file_path", context_path)
        so.add_session_config_entry("ep.context_embed_mode", "0")
    return so


def _open(
    model: bytes | str, options: Mapping[str, str], context_path: str | None, severity: int, config: Mapping
) -> tuple[Any, str | None, str]:
    """(session or None, the one-line error or None, onnxruntime's log)."""
    import onnxruntime as ort

    try:
        with captured_native_output() as out:
            so = _session_options(options, context_path=context_path, severity=severity, config=config)
            # the Q -> DQ -> Q pairs opendlc's lowering adds (a requantization HTP runs) must stay
            session = ort.InferenceSession(model, so, disabled_optimizers=_KEEP_REQUANTIZATION)
    except Exception as e:
        return None, _one_line(e), out.text
    return session, None, out.text


def _raise_for(what: str, error: str, text: str) -> None:
    log.debug("HTP session for %s failed: %s\n%s", what, error, text)
    nodes = parse_rejected_nodes(text)
    if nodes:
        raise HtpRejectedNodes(_rejected_message(what, nodes), nodes) from None
    raise HtpError(f"HTP {what}: {_backend_error(text) or error}") from None


def create_session(
    model: bytes | str,
    options: Mapping[str, str],
    *,
    what: str,
    config: Mapping[str, str] | None = None,
) -> Any:
    """An HTP ``InferenceSession`` for ``model`` (serialized ONNX or a path), CPU fallback disabled.

    ``what`` names the target in error messages.  Failures raise :class:`HtpError` with one line;
    rejected nodes raise :class:`HtpRejectedNodes` listing them and the backend's reasons.
    """
    config = config or {}
    session, error, text = _open(model, options, None, _QUIET, config)
    if session is not None:
        return session
    if "assigned to the default CPU EP" in (error or "") or "Unsupported nodes" in text:
        # onnxruntime says why each node was refused only in its verbose log: ask again
        _, error2, text = _open(model, options, None, _VERBOSE, config)
        error = error2 or error
    _raise_for(what, error or "failed", text)
    raise AssertionError("unreachable")


def compile_to_context(
    model: bytes | str, options: Mapping[str, str], context_path: str, *, what: str
) -> list[tuple[str, str]]:
    """Compile ``model`` into an EPContext model at ``context_path`` (its binary beside it).

    Returns the nodes HTP takes outside a quantized group -- ``(name, op type)`` -- which it runs
    unquantized (float16 for float data), read from onnxruntime's verbose log.
    """
    session, error, text = _open(model, options, context_path, _VERBOSE, {})
    if session is None:
        _raise_for(what, error or "failed", text)
    return parse_unquantized_nodes(text)


def _one_line(e: Exception) -> str:
    text = str(e).strip()
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    return text.splitlines()[0] if text else type(e).__name__


_LOG_LINE = re.compile(r"\[E:onnxruntime:[^\]]*\]\s*(.*)")


def _backend_error(text: str) -> str | None:
    """The most telling error line of onnxruntime's log (not the generic CPU-fallback one)."""
    for line in text.splitlines():
        m = _LOG_LINE.search(line)
        if m and "default CPU EP" not in m.group(1) and "power config" not in m.group(1):
            msg = m.group(1).strip()
            return re.sub(r"^OrtEp::GetCapability\(\) for \w+ failed with error: ", "", msg)
    return None


_FAILED = re.compile(r"Validation FAILED for \d+ nodes in \w+ \(([^)]*)\)")
_NODE = re.compile(r"Operator type: (\S+) Node name: (.*?) Node index: \d+")
_REASON = re.compile(r"REASON\s*:\s*(.*)")
_UNSUPPORTED = re.compile(r"\{ name: ([^,]*), type: ([^ ]*) \}")
_SINGLE = re.compile(r"Validation PASSED for 1 nodes in \w+ \((\w+)\)")
_NOT_COMPUTE = {"QuantizeLinear", "DequantizeLinear"}


def parse_unquantized_nodes(text: str) -> list[tuple[str, str]]:
    """Nodes the QNN EP took alone, not in a DequantizeLinear -> op -> QuantizeLinear group."""
    found: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _SINGLE.search(line)
        if m and m.group(1) not in _NOT_COMPUTE and i + 1 < len(lines):
            node = _NODE.search(lines[i + 1])
            if node:
                found.setdefault(node.group(2), node.group(1))
    return list(found.items())


def parse_rejected_nodes(text: str) -> list[RejectedNode]:
    """Nodes onnxruntime's QNN EP refused, with its reasons, from a verbose log (deduplicated)."""
    found: dict[str, RejectedNode] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if _FAILED.search(lines[i]):
            members: list[tuple[str, str]] = []
            reason = ""
            j = i + 1
            while j < len(lines) and lines[j].startswith(("\t", " ")) and not _FAILED.search(lines[j]):
                if m := _NODE.search(lines[j]):
                    members.append((m.group(2), m.group(1)))
                elif m := _REASON.search(lines[j]):
                    # "...not supported by QNN EP.Det node `x` will not be assigned..." -> first sentence
                    reason = re.split(r"\.(?=[A-Z])", m.group(1).strip())[0].rstrip(".")
                j += 1
            # a QDQ unit lists its Q/DQ nodes too: name the compute node
            core = [mb for mb in members if mb[1] not in ("QuantizeLinear", "DequantizeLinear")] or members
            for name, op in core:
                found.setdefault(name, RejectedNode(name, op, reason))
            i = j
            continue
        i += 1
    if not found:  # the error-level summary at least names them
        for m in _UNSUPPORTED.finditer(text):
            found.setdefault(m.group(1), RejectedNode(m.group(1), m.group(2), "not supported by the QNN EP"))
    return list(found.values())


def _rejected_message(what: str, nodes: list[RejectedNode], shown: int = 3) -> str:
    parts = [f"{n.name or '(unnamed)'} ({n.op_type}): {n.reason.rstrip('.')}" for n in nodes[:shown]]
    more = f"; and {len(nodes) - shown} more (--debug lists them)" if len(nodes) > shown else ""
    for n in nodes:
        log.debug("rejected by HTP: %s (%s): %s", n.name, n.op_type, n.reason)
    return (
        f"HTP {what} does not take {len(nodes)} node(s) and CPU fallback is disabled: "
        + "; ".join(parts)
        + more
    )
