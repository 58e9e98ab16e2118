"""Quantizing a model file: calibration inputs from an input list in, the quantizer's files out.

This is the public Python API behind ``opendlc quantize`` and the drop-in ``qairt-quantizer``,
``snpe-dlc-quant`` and ``snpe-dlc-quantize`` commands (see docs/quantization.md, "Command line and
Python API").  The engine itself is :func:`opendlc.quant.api.quantize`; this module checks the options
against the loaded plugins, reads the calibration inputs lazily, and writes the outputs atomically.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from opendlc import container as dlc
from opendlc.atomic import write_bytes_atomic
from opendlc.encodings import EncodingSet
from opendlc.errors import NotAvailableError, UsageError
from opendlc.input_list import (
    InputList,
    InputSpec,
    check_file_size,
    input_specs,
    iter_samples,
    read_input_list,
    resolve_outputs,
)
from opendlc.plugin_manager import Registry, get_plugin_manager
from opendlc.quant.options import QuantizerOptions
from opendlc.targets import Backend

log = logging.getLogger("opendlc.quantize")

# AIMET encodings file formats --dump_encoding_json can write.  0.6.1 (tensor-name keyed objects) is
# what the SDK's quantizers dump; 1.0.0 (lists with per-channel vectors) is AIMET's newer format.
ENCODING_JSON_VERSIONS = ("0.6.1", "1.0.0")
DEFAULT_ENCODING_JSON_VERSION = "0.6.1"
DEFAULT_HTP_SOC = "sm8650"
AIMET_INSTALL_HINT = "pip install torch==2.13.0 aimet-onnx"


@dataclass
class QuantizeResult:
    """What :func:`quantize_file` wrote."""

    container: dlc.Container
    output: Path
    encodings_json: Path | None = None


class LazySamples:
    """The samples of an input list, read one at a time when iterated; ``len()`` is the count."""

    def __init__(self, lst: InputList, specs: list[InputSpec], *, native: bool = False) -> None:
        self._lst, self._specs, self._native = lst, specs, native

    def __len__(self) -> int:
        return len(self._lst)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter_samples(self._lst, self._specs, native=self._native)


@dataclass
class CalibrationInputs:
    """Samples read lazily from an input list, and the extra outputs its ``#``/``%`` lines ask for."""

    samples: LazySamples
    extra_outputs: list[str]

    @property
    def count(self) -> int:
        return len(self.samples)


def default_output_path(input_dlc: str | os.PathLike[str]) -> Path:
    """``<input>_quantized.dlc`` beside the input, as the SDK's quantizers name it."""
    p = Path(input_dlc)
    return p.with_name(f"{p.stem}_quantized.dlc")


def encodings_json_path(output: str | os.PathLike[str]) -> Path:
    """Where ``--dump_encoding_json`` writes: ``<output stem>_encoding.json`` beside the output."""
    p = Path(output)
    return p.with_name(f"{p.stem}_encoding.json")


# ---- calibration inputs ---------------------------------------------------------------------------
def check_input_sizes(lst: InputList, specs: list[InputSpec], *, native: bool = False) -> None:
    """Check every raw file's size before calibration starts, so a bad file fails in a second."""
    for sample in lst.samples:
        for spec in specs:
            check_file_size(sample[spec.name], spec, native=native)


def calibration_inputs(
    model: onnx.ModelProto, input_list: str | os.PathLike[str], *, native: bool = False
) -> CalibrationInputs:
    """Read and check ``input_list`` against ``model``; the samples themselves are read one at a time.

    Raw files hold float32 values unless ``native`` (the model's own input element types).
    """
    specs = input_specs(model)
    lst = read_input_list(input_list, specs)
    check_input_sizes(lst, specs, native=native)
    extra = resolve_outputs(model, lst.output_layers, lst.output_tensors)
    return CalibrationInputs(LazySamples(lst, specs, native=native), extra)


# ---- options against the plugins ------------------------------------------------------------------
def _lookup(registry: Registry, name: str, option: str):
    try:
        return registry.get(name)
    except UsageError as e:
        raise UsageError(f"{option}: {e}") from None


def check_options(options: QuantizerOptions) -> QuantizerOptions:
    """Validate ``options`` against the loaded plugins; return a copy with canonical plugin names.

    Names are looked up in the registries (so a calibration method no plugin provides is a one-line
    error listing those that exist), and the target backend's plugin says which bitwidths,
    per-channel/per-row and float16 it supports.
    """
    options.validate()
    pm = get_plugin_manager()
    _lookup(pm.calibration_methods, options.act_quantizer_calibration, "--act_quantizer_calibration")
    _lookup(pm.calibration_methods, options.param_quantizer_calibration, "--param_quantizer_calibration")
    _lookup(pm.schemas, options.act_quantizer_schema, "--act_quantizer_schema")
    _lookup(pm.schemas, options.param_quantizer_schema, "--param_quantizer_schema")
    for name in options.apply_algorithms:
        _lookup(pm.algorithms, name, "--apply_algorithms")
    backend: Backend = _lookup(pm.backends, options.target_backend, "--target_backend")
    soc_name = None
    if options.target_soc_model is not None:
        soc_name = _lookup(pm.socs, options.target_soc_model, "--target_soc_model").name
    w, a, b = options.weights_bitwidth, options.act_bitwidth, options.bias_bitwidth
    reason = backend.check_bitwidths(w, a, b)
    if reason:
        raise UsageError(
            f"--target_backend {backend.name} with --weights_bitwidth {w} --act_bitwidth {a} "
            f"--bias_bitwidth {b}: {reason}"
        )
    for flag, wanted, supported, what in (
        (
            "--use_per_channel_quantization",
            options.use_per_channel_quantization,
            backend.per_channel,
            "per-channel",
        ),
        ("--use_per_row_quantization", options.use_per_row_quantization, backend.per_row, "per-row"),
        (
            "--enable_per_row_quantized_bias",
            options.enable_per_row_quantized_bias,
            backend.per_row,
            "per-row",
        ),
    ):
        if wanted and not supported:
            raise UsageError(f"{flag}: --target_backend {backend.name} has no {what} quantization")
    for flag, value in (
        ("--float_bitwidth", options.float_bitwidth),
        ("--float_bias_bitwidth", options.float_bias_bitwidth),
    ):
        if value == 16 and not backend.float16:
            raise UsageError(f"{flag} 16: --target_backend {backend.name} has no float16")
    _check_package_libs(options)
    return dataclasses.replace(options, target_backend=backend.name, target_soc_model=soc_name)


def _check_package_libs(options: QuantizerOptions) -> None:
    for path in options.udo_package_path:
        if not Path(path).is_file():
            raise UsageError(f"--udo_package_path: {path}: no such registration library")
    for entry in options.op_package_lib:
        path, sep, provider = entry.rpartition(":")
        if not sep or not path or not provider:
            raise UsageError(
                f"--op_package_lib '{entry}': expected LIBRARY_PATH:INTERFACE_PROVIDER "
                "(several separated by commas)"
            )
        if not Path(path).is_file():
            raise UsageError(f"--op_package_lib: {path}: no such op package library")


def _check_io_names(model: onnx.ModelProto, names: list[str] | None) -> None:
    if not names:
        return
    io = dlc.graph_io(model)
    known = [v["name"] for v in io["inputs"]] + [v["name"] for v in io["outputs"]]
    for name in names:
        if name not in known:
            raise UsageError(
                f"--preserve_io_datatype: the model has no input or output '{name}' "
                f"(inputs and outputs: {', '.join(known)})"
            )


# ---- optional capabilities --------------------------------------------------------------------------
def htp_preparer() -> Callable[..., dlc.Container]:
    """``opendlc.htp.prepare_container``, or a one-line error when this opendlc has none."""
    htp = importlib.import_module("opendlc.htp")
    prepare = getattr(htp, "prepare_container", None)
    if prepare is None:
        raise NotAvailableError(
            "HTP cache records (--enable_htp) need HTP graph preparation, which is not available "
            "in this version of opendlc; quantize without --enable_htp and prepare later"
        )
    return prepare


def require_aimet() -> None:
    """One line saying how to install aimet-onnx when ``--use_aimet_quantizer`` cannot run."""
    if importlib.util.find_spec("aimet_onnx") is None:
        raise NotAvailableError(
            f"--use_aimet_quantizer needs aimet-onnx, which is not installed: {AIMET_INSTALL_HINT}"
        )


# ---- stripping -------------------------------------------------------------------------------------
def strip_container(c: dlc.Container) -> dlc.Container:
    """A copy of ``c`` without what composing the graph for a backend does not need.

    Kept: the model's graph, weights and opsets; the encodings (scale, offset, bitwidth, range and
    axis of every tensor); cache records.  Dropped: the stored overrides (they only matter when
    quantizing again), the container's free-form ``meta`` and the encodings' ``meta`` (provenance and
    the options that produced them), and in the model every ``doc_string``, ``metadata_props``,
    ``value_info`` (intermediate shapes, which shape inference recomputes) and the producer fields.
    """
    model = onnx.ModelProto()
    model.CopyFrom(c.model)
    model.ClearField("doc_string")
    model.ClearField("producer_name")
    model.ClearField("producer_version")
    del model.metadata_props[:]
    _strip_graph(model.graph)
    for f in model.functions:
        f.ClearField("doc_string")
        for n in f.node:
            n.ClearField("doc_string")
    encodings = None
    if c.encodings is not None:
        encodings = EncodingSet(dict(c.encodings.tensors), {})
    return dlc.Container(model=model, encodings=encodings, overrides=None, records=list(c.records), meta={})


def _strip_graph(g: onnx.GraphProto) -> None:
    g.ClearField("doc_string")
    del g.value_info[:]
    for v in list(g.input) + list(g.output):
        v.ClearField("doc_string")
    for t in g.initializer:
        t.ClearField("doc_string")
    for n in g.node:
        n.ClearField("doc_string")
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _strip_graph(a.g)
            for sub in a.graphs:
                _strip_graph(sub)


# ---- the whole job -----------------------------------------------------------------------------------
def quantize_file(
    input_dlc: str | os.PathLike[str],
    output_dlc: str | os.PathLike[str] | None = None,
    *,
    input_list: str | os.PathLike[str] | None = None,
    options: QuantizerOptions | None = None,
    use_native_input_files: bool = False,
    use_native_output_files: bool = False,
    dump_encoding_json: bool = False,
    encoding_json_version: str = DEFAULT_ENCODING_JSON_VERSION,
    export_stripped_dlc: bool = False,
    htp_socs: list[str] | None = None,
    overwrite_cache_records: bool = False,
    htp_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> QuantizeResult:
    """Quantize the model in ``input_dlc`` (a container or an ``.onnx``) and write the results.

    ``input_list`` names the calibration inputs (snpe-net-run's format); it may be left out only with
    ``options.enable_float_fallback``, which takes the encodings from the stored overrides.  The
    quantized container goes to ``output_dlc`` (default ``<input>_quantized.dlc``);
    ``dump_encoding_json`` also writes its encodings as an AIMET file ``<output stem>_encoding.json``
    in ``encoding_json_version``; ``export_stripped_dlc`` writes the container through
    :func:`strip_container`; ``htp_socs`` adds HTP cache records for those SoCs
    (``opendlc.htp.prepare_container``, given ``htp_options`` such as ``use_float_io`` and the
    ``udo_package_path`` of ``options``).  Every input is checked before calibration starts; nothing is
    written unless everything succeeds.
    """
    input_dlc = Path(input_dlc)
    options = check_options(options or QuantizerOptions())
    output = Path(output_dlc) if output_dlc is not None else default_output_path(input_dlc)
    if output.resolve() == input_dlc.resolve():
        raise UsageError(f"{output}: the output would overwrite the input; give another --output_dlc")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{output}: cannot write: folder {folder} does not exist")
    if encoding_json_version not in ENCODING_JSON_VERSIONS:
        raise UsageError(
            f"unknown encodings JSON version '{encoding_json_version}' "
            f"(known: {', '.join(ENCODING_JSON_VERSIONS)})"
        )
    if input_list is None and not options.enable_float_fallback:
        raise UsageError("--input_list is required unless --enable_float_fallback is given")
    if input_list is not None and options.enable_float_fallback:
        raise UsageError("--enable_float_fallback cannot be used with --input_list")
    prepare = None
    socs: list[str] = []
    if htp_socs is not None:
        socs = [
            _lookup(get_plugin_manager().socs, s, "--htp_socs").name for s in htp_socs or [DEFAULT_HTP_SOC]
        ]
        prepare = htp_preparer()  # after the names: an unknown SoC is a usage error either way
    if options.use_aimet_quantizer:
        require_aimet()
        from opendlc.aimet_quant import check_aimet_options

        check_aimet_options(options)

    source = dlc.load(input_dlc)
    _check_io_names(source.model, options.preserve_io_datatype)
    samples = None
    extra: list[str] = []
    if input_list is not None:
        inputs = calibration_inputs(source.model, input_list, native=use_native_input_files)
        samples, extra = inputs.samples, inputs.extra_outputs
        log.info("calibrating with %d sample(s) from %s", inputs.count, input_list)

    if options.use_aimet_quantizer:
        from opendlc.aimet_quant import quantize_with_aimet

        quantized = quantize_with_aimet(source, samples, options, extra_outputs=extra, progress=progress)
    else:
        from opendlc.quant.api import quantize

        quantized = quantize(source, samples, options, extra_outputs=extra or None, progress=progress)
    if use_native_output_files:
        # The quantizer writes no tensor files itself: the choice is kept for whoever runs the model.
        quantized.meta["use_native_output_files"] = True
    if prepare is not None:
        extra_prepare = dict(htp_options or {})
        if options.udo_package_path:
            extra_prepare.setdefault("udo_package_path", list(options.udo_package_path))
        quantized = prepare(
            quantized, socs=socs, overwrite=overwrite_cache_records, progress=progress, **extra_prepare
        )
    if export_stripped_dlc:
        quantized = strip_container(quantized)

    encodings_out = None
    if dump_encoding_json:
        if quantized.encodings is None:
            raise UsageError("--dump_encoding_json: the quantizer produced no encodings")
        encodings_out = encodings_json_path(output)
        text = json.dumps(quantized.encodings.to_aimet(encoding_json_version), indent=2)
    quantized.write(output)
    if encodings_out is not None:
        write_bytes_atomic(encodings_out, text.encode())
    return QuantizeResult(quantized, output, encodings_out)
