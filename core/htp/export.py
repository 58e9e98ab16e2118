"""``opendlc export``: a container as a QDQ ONNX model, an EPContext model + context binary, or a QAIRT DLC.

* ``qdq`` -- the QDQ model (``to_qdq_model``); onnxruntime runs it on the CPU as the quantized simulation.
* ``ep-context`` -- what onnxruntime with the QNN execution provider loads on a device: ``OUT`` (an
  EPContext ONNX model) and ``<OUT stem>_qnn.bin`` (the HTP context binary) beside it.  The binary is the
  container's cache record for the SoC (or its architecture), or is prepared on the fly when there is
  none.  Fixed-point IO buffers get a QuantizeLinear/DequantizeLinear outside the EPContext node, so the
  model's inputs and outputs are the float tensors of the original model (onnxruntime runs those on the
  CPU, as its own ``offload_graph_io_quantization`` does).
* ``qnn-dlc`` -- a QAIRT ``.dlc`` written by Qualcomm's QNN IR backend from the QDQ model.

Every file is written atomically; nothing is left behind on failure.
"""

from __future__ import annotations

import io
import logging
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from opendlc.atomic import write_bytes_atomic
from opendlc.container import CacheRecord, Container
from opendlc.errors import OpendlcError, UsageError
from opendlc.htp.context import MS_DOMAIN, epcontext_model
from opendlc.htp.prepare import DEFAULT_SOC, HtpPrepareOptions, find_record, prepare_model, prepare_records
from opendlc.htp.qdq import Buffer, qdq_model_for
from opendlc.htp.qnn import create_session, ir_backend_path, provider_options
from opendlc.prepare import PrepareTarget

log = logging.getLogger("opendlc.export")

FORMATS = ("qdq", "ep-context", "qnn-dlc")
_SUFFIX = {"qdq": "_qdq.onnx", "ep-context": "_ctx.onnx", "qnn-dlc": "_qnn.dlc"}


def default_output(source: Path, fmt: str) -> Path:
    return source.with_name(source.stem + _SUFFIX[fmt])


def export_qdq(container: Container, out: Path) -> list[Path]:
    model = qdq_model_for(container)
    if model.ByteSize() > 2_000_000_000:
        raise OpendlcError("the QDQ model is over 2 GB; a single-file ONNX model cannot hold it")
    write_bytes_atomic(out, model.SerializeToString())
    return [out]


def _record_for(container: Container, soc: str) -> CacheRecord:
    try:
        return find_record(container, soc=soc)
    except UsageError:
        pass
    log.info(
        "%s has no cache record for %s: preparing one (graph-prepare stores it)",
        container.path or "model",
        soc,
    )
    report = prepare_records(container, socs=soc, options=HtpPrepareOptions())
    return report.results[0].record


def ep_context_model(record: CacheRecord, binary_file: str) -> onnx.ModelProto:
    """The record's EPContext model referring to ``binary_file``, with float IO around fixed-point buffers."""
    model = epcontext_model(record.info["graph"], binary_file=binary_file)
    g = model.graph
    inits: list[onnx.TensorProto] = []
    head: list[onnx.NodeProto] = []
    tail: list[onnx.NodeProto] = []

    def typed(name: str, b: Buffer) -> None:  # the EPContext node's own IO keeps the buffer's type
        g.value_info.append(
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(b.dtype)), b.shape)
        )

    def qdq(op: str, src: str, dst: str, b: Buffer) -> onnx.NodeProto:
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(b.dtype))
        s, z = f"{b.name}__io_scale", f"{b.name}__io_zero_point"
        inits.append(numpy_helper.from_array(np.array(b.scale, dtype=np.float32), s))
        inits.append(helper.make_tensor(z, elem, [], [-int(b.offset or 0)]))
        return helper.make_node(op, [src, s, z], [dst], domain=MS_DOMAIN if b.bitwidth == 16 else "")

    for d in record.info["inputs"]:
        b = Buffer.from_json(d)
        if not b.fixed_point:
            continue
        inner = f"{b.name}__htp"
        for n in g.node:
            n.input[:] = [inner if v == b.name else v for v in n.input]
        head.append(qdq("QuantizeLinear", b.name, inner, b))
        typed(inner, b)
        next(v for v in g.input if v.name == b.name).type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for d in record.info["outputs"]:
        b = Buffer.from_json(d)
        if not b.fixed_point:
            continue
        inner = f"{b.name}__htp"
        for n in g.node:
            n.output[:] = [inner if v == b.name else v for v in n.output]
        tail.append(qdq("DequantizeLinear", inner, b.name, b))
        typed(inner, b)
        next(v for v in g.output if v.name == b.name).type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    nodes = [*head, *g.node, *tail]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    return model


def export_ep_context(container: Container, out: Path, soc: str) -> list[Path]:
    record = _record_for(container, soc)
    binary = out.with_name(f"{out.stem}_qnn.bin")
    model = ep_context_model(record, binary.name)
    write_bytes_atomic(binary, record.data)
    try:
        write_bytes_atomic(out, model.SerializeToString())
    except BaseException:
        binary.unlink(missing_ok=True)
        raise
    return [out, binary]


def export_qnn_dlc(container: Container, out: Path, soc: str) -> list[Path]:
    from opendlc.plugin_manager import get_plugin_manager

    prepared = prepare_model(container, HtpPrepareOptions())
    s = get_plugin_manager().socs.get(soc)
    target = PrepareTarget(arch=s.htp_arch, soc=s.name, soc_model=s.soc_model, vtcm_mb=s.vtcm_mb)
    options = {
        **provider_options(target),
        "dump_qnn_ir_dlc": "1",
        "qnn_ir_backend_path": ir_backend_path(),
    }
    folder = out.parent if str(out.parent) else Path(".")
    with tempfile.TemporaryDirectory(prefix=".opendlc-qnn-ir-", dir=folder) as d:
        options["dump_qnn_ir_dlc_dir"] = d
        create_session(prepared.model, options, what="QNN IR export")
        dlcs = sorted(Path(d).glob("*.dlc"))
        if len(dlcs) != 1:
            raise OpendlcError(f"the QNN IR backend wrote {len(dlcs)} .dlc files, expected one")
        data = dlcs[0].read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = z.namelist()
    except zipfile.BadZipFile:
        raise OpendlcError("the QNN IR backend wrote something that is not a DLC (not a zip)") from None
    if "model" not in members:
        raise OpendlcError("the QNN IR backend wrote a .dlc without a model")
    write_bytes_atomic(out, data)
    return [out]


def export(container: Container, fmt: str, out: Path, *, soc: str | None = None) -> list[Path]:
    """Write ``container`` in ``fmt``; return the files written."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if soc is not None and fmt == "qdq":
        raise UsageError("--soc applies to --format ep-context and qnn-dlc")
    if container.path is not None and out.resolve() == Path(container.path).resolve():
        raise UsageError(f"{out}: the output would overwrite the input; give another -o")
    if fmt == "qdq":
        return export_qdq(container, out)
    if fmt == "ep-context":
        return export_ep_context(container, out, soc or DEFAULT_SOC)
    return export_qnn_dlc(container, out, soc or DEFAULT_SOC)
