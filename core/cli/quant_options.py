"""The quantizers' command lines: ``snpe-dlc-quant``, ``snpe-dlc-quantize``, ``qairt-quantizer`` and
``opendlc quantize``, parsed by one set of code into one :func:`opendlc.quant_io.quantize_file` call.

Each command accepts exactly the options the SDK documents for it (``--opt value`` and ``--opt=value``;
qairt-quantizer's short forms and lists), plus the logging options, which
:func:`opendlc.cli.runner.run` takes off the line first.  ``opendlc quantize`` takes qairt-quantizer's
options and ``--dump_encoding_json_version``.

Rules kept throughout: where the SDK's text says two options cannot be mixed, or that one must (not) be
given with another, that is an error naming both; where it says an option only applies under some
condition that does not hold, the option is ignored with a one-line warning; a deprecated option works
as before and prints one warning line naming its replacement.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opendlc import __version__
from opendlc.cli.logging_options import HELP as LOG_HELP
from opendlc.cli.logging_options import state as log_state
from opendlc.errors import UsageError
from opendlc.quant.options import QuantizerOptions
from opendlc.quant_io import DEFAULT_ENCODING_JSON_VERSION, DEFAULT_HTP_SOC, ENCODING_JSON_VERSIONS

log = logging.getLogger("opendlc.quantize")

SNPE_DLC_QUANT = "snpe-dlc-quant"
SNPE_DLC_QUANTIZE = "snpe-dlc-quantize"
QAIRT_QUANTIZER = "qairt-quantizer"
OPENDLC_QUANTIZE = "opendlc quantize"
DIALECTS = (SNPE_DLC_QUANT, SNPE_DLC_QUANTIZE, QAIRT_QUANTIZER, OPENDLC_QUANTIZE)
SNPE_DIALECTS = (SNPE_DLC_QUANT, SNPE_DLC_QUANTIZE)

# SNPE's --param_quantizer/--act_quantizer names -> (calibration method, schema).
LEGACY_QUANTIZERS = {
    "tf": ("min-max", "asymmetric"),
    "enhanced": ("enhanced", "asymmetric"),
    "symmetric": ("min-max", "symmetric"),
}
ADJUSTED = ("adjusted", "asymmetric")  # --use_adjusted_weights_quantizer, parameters only

# Options whose value may start with '-' (a negative hex number): argparse would take it for an option.
_NEGATIVE_VALUED = ("--restrict_quantization_steps",)
_HEX = re.compile(r"[+-]?0[xX][0-9a-fA-F]+")


class _ParserExit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one-line UsageErrors and whose exits do not end the process."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            print(message, file=sys.stderr, end="")
        raise _ParserExit(status)


# ---- the parsers --------------------------------------------------------------------------------
_DESCRIPTIONS = {
    SNPE_DLC_QUANT: "Quantize a float model container: calibrate on the inputs of an input list and "
    "store fixed-point encodings in a new container (a drop-in for the SDK's snpe-dlc-quant).",
    SNPE_DLC_QUANTIZE: "Quantize a float model container like snpe-dlc-quant and, with --enable_htp, "
    "add HTP cache records for the chosen SoCs (a drop-in for the SDK's snpe-dlc-quantize).",
    QAIRT_QUANTIZER: "Quantize a float model container: calibrate on the inputs of an input list and "
    "store fixed-point encodings in a new container (a drop-in for the SDK's qairt-quantizer).",
    OPENDLC_QUANTIZE: "Quantize a float model container (or an ONNX model): calibrate on the inputs of an "
    "input list and store fixed-point encodings in a new container.  Takes qairt-quantizer's options.",
}


def build_parser(dialect: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command; options not given are absent from the namespace it returns."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown quantizer command {dialect!r}")
    p = _Parser(
        prog=prog or dialect,
        description=textwrap.fill(_DESCRIPTIONS[dialect], 100),
        epilog=LOG_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    if dialect in SNPE_DIALECTS:
        _snpe_options(p, dialect)
    else:
        _qairt_options(p, dialect)
    return p


def _bitwidth_options(q: argparse._ArgumentGroup) -> None:
    """The bitwidth options every quantizer takes (the same in SNPE's and QAIRT's tools)."""
    q.add_argument(
        "--weights_bitwidth", type=int, metavar="N", help="Bits of weight encodings: 4, 8 (default) or 16."
    )
    q.add_argument(
        "--act_bitwidth", type=int, metavar="N", help="Bits of activation encodings: 8 (default) or 16."
    )
    q.add_argument(
        "--bias_bitwidth", type=int, metavar="N", help="Bits of bias encodings: 8 (default) or 32."
    )
    q.add_argument(
        "--float_bitwidth",
        type=int,
        metavar="N",
        help="Bits of tensors left in floating point: 32 (default) or 16.",
    )
    q.add_argument(
        "--float_bias_bitwidth",
        type=int,
        metavar="N",
        help="Bits of biases left in floating point: 32 or 16 (default: as the encodings say).",
    )


def _native_input_option(io: argparse._ArgumentGroup) -> None:
    io.add_argument(
        "--use_native_input_files",
        action="store_true",
        help="Raw input files hold the model's own input types (e.g. uint8), not float32.",
    )


def _native_output_option(io: argparse._ArgumentGroup) -> None:
    io.add_argument(
        "--use_native_output_files",
        action="store_true",
        help="Record that output files of this model should be written in its native types "
        "rather than float32 (the quantizer itself writes none).",
    )


def _snpe_options(p: argparse.ArgumentParser, dialect: str) -> None:
    p.add_argument(
        "--version",
        action="version",
        version=f"{dialect} (opendlc {__version__})",
        help="Print the version and exit.",
    )
    io = p.add_argument_group("input and output")
    io.add_argument(
        "--input_dlc",
        metavar="FILE",
        help="The float model to quantize: an opendlc container or an ONNX model (required).",
    )
    io.add_argument(
        "--input_list",
        metavar="FILE",
        help="Text file naming the calibration inputs, one line per sample: raw files, or "
        "name:=file pairs for several inputs; optional first lines '#layers' / '%%tensors' "
        "ask for extra outputs. Relative paths are relative to the list.",
    )
    io.add_argument(
        "--output_dlc",
        metavar="FILE",
        help="Where to write the quantized container (default: <input>_quantized.dlc next to the input).",
    )
    _native_input_option(io)
    io.add_argument(
        "--use_native_dtype", action="store_true", help="Old name of --use_native_input_files (deprecated)."
    )
    _native_output_option(io)
    io.add_argument(
        "--udo_package_path",
        action="append",
        metavar="LIB[,LIB...]",
        help="Registration library of a user-defined-op package; several separated by commas "
        "or by repeating the option.",
    )
    if dialect == SNPE_DLC_QUANTIZE:
        htp = p.add_argument_group("HTP cache records")
        htp.add_argument(
            "--enable_htp",
            action="store_true",
            help="Also prepare the quantized graph for HTP and store the result as cache "
            "records in the output container.",
        )
        htp.add_argument(
            "--htp_socs",
            metavar="SOC[,SOC...]",
            help=f"SoCs to prepare cache records for, comma-separated (default {DEFAULT_HTP_SOC}).",
        )
        htp.add_argument(
            "--overwrite_cache_records",
            action="store_true",
            help="Replace cache records the input already has for the same SoCs.",
        )
        htp.add_argument(
            "--use_float_io",
            action="store_true",
            help="Deprecated: --enable_htp, with the HTP graph taking float32 inputs and outputs.",
        )
    q = p.add_argument_group("quantization")
    _bitwidth_options(q)
    q.add_argument(
        "--bitwidth",
        type=int,
        metavar="N",
        help="Deprecated: one bitwidth (8 or 16) for weights, activations and biases (16 gives "
        "32-bit biases). Not together with the three options above.",
    )
    q.add_argument(
        "--param_quantizer",
        metavar="NAME",
        help="How weight and bias ranges are chosen: tf (observed min/max, default), enhanced "
        "(a range searched to cut long tails), symmetric (min/max made symmetric, offset 0), "
        "adjusted (8-bit weights: the adjusted min/max method).",
    )
    q.add_argument(
        "--act_quantizer",
        metavar="NAME",
        help="How activation ranges are chosen: tf (default), enhanced or symmetric, as above.",
    )
    q.add_argument(
        "--use_enhanced_quantizer",
        action="store_true",
        help="Deprecated: --param_quantizer enhanced --act_quantizer enhanced.",
    )
    q.add_argument(
        "--use_adjusted_weights_quantizer",
        action="store_true",
        help="Deprecated: choose 8-bit weight ranges with the adjusted min/max method.",
    )
    q.add_argument(
        "--use_symmetric_quantize_weights",
        action="store_true",
        help="Deprecated: --param_quantizer symmetric.",
    )
    q.add_argument(
        "--use_per_channel_quantization",
        action="store_true",
        help="One encoding per output channel for the weights of convolutions, transposed "
        "convolutions and fully-connected layers.",
    )
    q.add_argument(
        "--axis_quant", action="store_true", help="Old name of --use_per_channel_quantization (deprecated)."
    )
    q.add_argument(
        "--use_per_row_quantization",
        action="store_true",
        help="One encoding per row for the weights of MatMul and fully-connected layers.",
    )
    q.add_argument(
        "--enable_per_row_quantized_bias",
        action="store_true",
        help="Per-row encodings for fully-connected biases too (needs --use_per_row_quantization).",
    )
    q.add_argument(
        "--restrict_quantization_steps",
        metavar="MIN,MAX",
        help="Integer range of symmetric weight encodings as two hex literals, a minus sign "
        'for the negative one, e.g. "-0x80,0x7F".',
    )
    q.add_argument(
        "--algorithms",
        action="append",
        metavar="NAME",
        help="Run a model-level algorithm before calibration, e.g. cle (cross-layer "
        "equalization); repeat for several.",
    )
    q.add_argument(
        "--optimizations", action="append", metavar="NAME", help="Old name of --algorithms (deprecated)."
    )
    q.add_argument(
        "--override_params",
        action="store_true",
        help="Use the encodings stored in the container by conversion (quantization-aware "
        "training, an overrides file) instead of calibrated ones where they exist.",
    )
    q.add_argument(
        "--float_fallback",
        action="store_true",
        help="No calibration: take the stored encodings (needs --override_params, no "
        "--input_list), propagate them across ops that do not change values, and run what is "
        "still unencoded in floating point.",
    )
    q.add_argument(
        "--no_weight_quantization", action="store_true", help="Deprecated; no longer has an effect."
    )
    q.add_argument(
        "--use_encoding_optimizations",
        action="store_true",
        help="Deprecated; the backend's encoding constraints are always applied.",
    )


def _qairt_options(p: argparse.ArgumentParser, dialect: str) -> None:
    io = p.add_argument_group("input and output")
    io.add_argument(
        "--input_dlc",
        "-i",
        metavar="FILE",
        help="The float model to quantize: an opendlc container or an ONNX model (required).",
    )
    io.add_argument(
        "--output_dlc",
        "-o",
        metavar="FILE",
        help="Where to write the quantized container (default: <input>_quantized.dlc next to the input).",
    )
    io.add_argument(
        "--input_list",
        "-l",
        metavar="FILE",
        help="Text file naming the calibration inputs, one line per sample: raw files, or "
        "name:=file pairs for several inputs; optional first lines '#layers' / '%%tensors' "
        "ask for extra outputs. Relative paths are relative to the list.",
    )
    _native_input_option(io)
    _native_output_option(io)
    io.add_argument(
        "--dump_encoding_json",
        action="store_true",
        help="Also write every tensor's encoding as an AIMET encodings file, "
        "<output stem>_encoding.json" + (" (format 0.6.1)." if dialect != OPENDLC_QUANTIZE else "."),
    )
    if dialect == OPENDLC_QUANTIZE:
        io.add_argument(
            "--dump_encoding_json_version",
            choices=ENCODING_JSON_VERSIONS,
            metavar="VERSION",
            help=f"AIMET format of --dump_encoding_json: {' or '.join(ENCODING_JSON_VERSIONS)} "
            f"(default {DEFAULT_ENCODING_JSON_VERSION}).",
        )
        io.add_argument(
            "--report",
            metavar="HTML",
            help="Also analyse the quantized model on the calibration inputs (as opendlc analyze "
            "does): an HTML report, its JSON twin and an overrides file beside it.",
        )
    io.add_argument(
        "--export_stripped_dlc",
        action="store_true",
        help="Write a smaller container: no stored overrides, provenance or documentation "
        "strings; what composing the graph needs is kept.",
    )
    io.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="YAML file of options, keyed by these option names (the command line wins).",
    )
    q = p.add_argument_group("quantization")
    _bitwidth_options(q)
    q.add_argument(
        "--act_quantizer_calibration",
        metavar="METHOD",
        help="How activation ranges are chosen from the statistics: min-max (default), sqnr, "
        "entropy, mse, percentile, or any method a plugin adds.",
    )
    q.add_argument(
        "--param_quantizer_calibration",
        metavar="METHOD",
        help="How weight ranges are chosen, from the same methods (default min-max).",
    )
    q.add_argument(
        "--act_quantizer_schema",
        metavar="SCHEMA",
        help="How an activation range becomes scale and offset: asymmetric (default), "
        "symmetric or unsignedsymmetric.",
    )
    q.add_argument(
        "--param_quantizer_schema", metavar="SCHEMA", help="The same for weights (default asymmetric)."
    )
    q.add_argument(
        "--percentile_calibration_value",
        type=float,
        metavar="P",
        help="Percentile kept by the percentile method, 90 to 100 (default 99.99).",
    )
    q.add_argument(
        "--use_per_channel_quantization",
        action="store_true",
        help="One encoding per output channel for the weights of convolution-like ops (where "
        "the model brings no encodings of its own).",
    )
    q.add_argument(
        "--use_per_row_quantization",
        action="store_true",
        help="One encoding per row for the weights of MatMul and fully-connected ops.",
    )
    q.add_argument(
        "--enable_per_row_quantized_bias",
        action="store_true",
        help="Per-row encodings for fully-connected biases too, with per-row weights.",
    )
    q.add_argument(
        "--restrict_quantization_steps",
        metavar='"MIN MAX"',
        help="Integer range of symmetric weight encodings as two hex literals, a minus sign "
        'for the negative one, e.g. "-0x80 0x7F".',
    )
    q.add_argument(
        "--keep_weights_quantized",
        action="store_true",
        help="Keep weights fixed-point even where an op's output stays in floating point.",
    )
    q.add_argument(
        "--adjust_bias_encoding",
        action="store_true",
        help="Widen bias encodings (adjusting weight encodings) so biases fit; per-channel "
        "weights only; may clip some weights.",
    )
    q.add_argument(
        "--apply_algorithms",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="Model-level algorithms to run before calibration, e.g. cle (cross-layer equalization).",
    )
    q.add_argument(
        "--ignore_quantization_overrides",
        action="store_true",
        help="Calibrate every tensor, ignoring encodings stored by conversion.",
    )
    q.add_argument(
        "--enable_float_fallback",
        "-f",
        action="store_true",
        help="No calibration: take the stored encodings (no --input_list), propagate them "
        "across ops that do not change values, and run what is still unencoded in floating "
        "point.",
    )
    q.add_argument(
        "--preserve_io_datatype",
        nargs="*",
        metavar="NAME",
        help="Keep the float type of these graph inputs/outputs; with no names, of all of them.",
    )
    q.add_argument(
        "--use_aimet_quantizer",
        action="store_true",
        help="Calibrate with aimet-onnx instead of opendlc's engine (when installed).",
    )
    q.add_argument(
        "--op_package_lib",
        "-opl",
        action="append",
        metavar="LIB:PROVIDER",
        help="Op package library for custom ops, as LIBRARY_PATH:INTERFACE_PROVIDER; several "
        "separated by commas.",
    )
    b = p.add_argument_group("backend")
    b.add_argument(
        "--target_backend",
        metavar="BACKEND",
        help="Runtime the encodings are made for: CPU, GPU, DSP, HTP (default), HTA, LPAI, or a "
        "backend a plugin adds; its operator constraints are applied.",
    )
    b.add_argument(
        "--target_soc_model",
        metavar="SOC",
        help="SoC the model will run on, e.g. SM8650 (needs --target_backend).",
    )


# ---- from the command line to a quantize_file() call ---------------------------------------------------
@dataclass
class QuantizeCommand:
    """The parsed command: :func:`opendlc.quant_io.quantize_file`'s arguments."""

    input_dlc: Path
    output_dlc: Path | None = None
    input_list: Path | None = None
    options: QuantizerOptions = field(default_factory=QuantizerOptions)
    use_native_input_files: bool = False
    use_native_output_files: bool = False
    dump_encoding_json: bool = False
    encoding_json_version: str = DEFAULT_ENCODING_JSON_VERSION
    export_stripped_dlc: bool = False
    htp_socs: list[str] | None = None
    overwrite_cache_records: bool = False
    htp_options: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None  # opendlc quantize --report: not quantize_file's

    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "report"}


def _attach_negative_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _NEGATIVE_VALUED and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def parse_args(dialect: str, argv: list[str], prog: str | None = None) -> dict[str, Any]:
    """The options given (on the line, and in a ``--config`` file under them), by option name."""
    parser = build_parser(dialect, prog)
    given = vars(parser.parse_args(_attach_negative_values(argv)))
    if "config" in given:
        from_file = _read_config(parser, Path(given["config"]))
        given = {**from_file, **given}  # the command line wins
    return given


def _read_config(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--config: {path}: no such file") from None
    except OSError as e:
        raise UsageError(f"--config: {path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"--config: {path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config: {path}: expected a mapping of option names to values")
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    tokens: list[str] = []
    for key, value in data.items():
        name = str(key).lstrip("-")
        action = actions.get(name)
        if action is None:
            raise UsageError(f"--config: {path}: unknown option '{key}'")
        tokens += _config_tokens(action, value, f"--config: {path}: '{key}'")
    try:
        return vars(parser.parse_args(tokens))
    except UsageError as e:
        raise UsageError(f"--config: {path}: {e}") from None


def _config_tokens(action: argparse.Action, value: Any, where: str) -> list[str]:
    flag = next(s for s in action.option_strings if s.startswith("--"))
    if action.nargs == 0:  # a flag
        if not isinstance(value, bool):
            raise UsageError(f"{where} takes true or false, not {value!r}")
        return [flag] if value else []
    if flag == "--restrict_quantization_steps" and isinstance(value, list):
        # YAML reads an unquoted 0x7F as the number 127: write the numbers back as hex literals
        value = " ".join(hex(v) if isinstance(v, int) else str(v) for v in value)
    if action.nargs in ("*", "+"):
        if value is True and action.nargs == "*":
            value = []
        items = value if isinstance(value, list) else str(value).split()
        return [f"{flag}={items[0]}"] + [str(v) for v in items[1:]] if items else [flag]
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [f"{flag}={v}" for v in items]
    if isinstance(value, (list, dict)) or value is None:
        raise UsageError(f"{where} takes one value, not {value!r}")
    return [f"{flag}={value}"]


def _parse_steps(text: str, dialect: str) -> tuple[int, int]:
    """``"-0x80,0x7F"`` (SNPE) or ``"-0x80 0x7F"`` (qairt-quantizer) -> (-128, 127)."""
    parts = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    example = '"-0x80,0x7F"' if dialect in SNPE_DIALECTS else '"-0x80 0x7F"'
    if len(parts) != 2:
        raise UsageError(f"--restrict_quantization_steps '{text}': expected MIN and MAX, e.g. {example}")
    for t in parts:
        if not _HEX.fullmatch(t):
            raise UsageError(
                f"--restrict_quantization_steps '{text}': '{t}' is not a hexadecimal literal "
                f"(write e.g. {example}, with an explicit minus sign)"
            )
    lo, hi = (int(t, 16) for t in parts)
    return lo, hi


def _split_commas(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _deprecated(option: str, replacement: str) -> None:
    log.warning("%s is deprecated; %s", option, replacement)


def _pick_quantizer(choices: list[tuple[str, tuple[str, str]]], what: str) -> tuple[str, str] | None:
    """One (calibration, schema) from the options that set it; different answers are an error."""
    if not choices:
        return None
    first_option, first = choices[0]
    for option, choice in choices[1:]:
        if choice != first:
            raise UsageError(
                f"{first_option} cannot be mixed with {option} (both choose the {what} quantizer)"
            )
    return first


def _legacy_quantizer(option: str, value: str) -> tuple[str, str]:
    known = dict(LEGACY_QUANTIZERS)
    if option == "--param_quantizer":
        known["adjusted"] = ADJUSTED
    if value not in known:
        raise UsageError(f"{option} '{value}' is not a quantizer (choose {', '.join(known)})")
    return known[value]


def _common(given: dict[str, Any], o: QuantizerOptions) -> None:
    for name in (
        "weights_bitwidth",
        "act_bitwidth",
        "bias_bitwidth",
        "float_bitwidth",
        "float_bias_bitwidth",
    ):
        if name in given:
            setattr(o, name, given[name])
    o.use_per_channel_quantization = given.get("use_per_channel_quantization", False)
    o.use_per_row_quantization = given.get("use_per_row_quantization", False)
    o.enable_per_row_quantized_bias = given.get("enable_per_row_quantized_bias", False)
    if o.enable_per_row_quantized_bias and not o.use_per_row_quantization:
        raise UsageError("--enable_per_row_quantized_bias needs --use_per_row_quantization")


def _snpe_command(dialect: str, given: dict[str, Any]) -> QuantizeCommand:
    o = QuantizerOptions()
    # SNPE's quantizers use stored encodings only when asked to.
    o.ignore_quantization_overrides = not given.get("override_params", False)
    if "bitwidth" in given:
        for other in ("weights_bitwidth", "act_bitwidth", "bias_bitwidth"):
            if other in given:
                raise UsageError(f"--bitwidth cannot be mixed with --{other}")
        bw = given["bitwidth"]
        if bw not in (8, 16):
            raise UsageError(f"--bitwidth {bw} is not supported (choose 8, 16)")
        bias = 8 if bw == 8 else 32
        _deprecated("--bitwidth", f"use --weights_bitwidth {bw} --act_bitwidth {bw} --bias_bitwidth {bias}")
        o.weights_bitwidth, o.act_bitwidth, o.bias_bitwidth = bw, bw, bias
    _common(given, o)
    if given.get("axis_quant"):
        _deprecated("--axis_quant", "use --use_per_channel_quantization")
        o.use_per_channel_quantization = True

    params: list[tuple[str, tuple[str, str]]] = []
    acts: list[tuple[str, tuple[str, str]]] = []
    if "param_quantizer" in given:
        params.append(("--param_quantizer", _legacy_quantizer("--param_quantizer", given["param_quantizer"])))
    if "act_quantizer" in given:
        acts.append(("--act_quantizer", _legacy_quantizer("--act_quantizer", given["act_quantizer"])))
    if given.get("use_enhanced_quantizer"):
        _deprecated("--use_enhanced_quantizer", "use --param_quantizer enhanced --act_quantizer enhanced")
        params.append(("--use_enhanced_quantizer", LEGACY_QUANTIZERS["enhanced"]))
        acts.append(("--use_enhanced_quantizer", LEGACY_QUANTIZERS["enhanced"]))
    if given.get("use_symmetric_quantize_weights"):
        _deprecated("--use_symmetric_quantize_weights", "use --param_quantizer symmetric")
        params.append(("--use_symmetric_quantize_weights", LEGACY_QUANTIZERS["symmetric"]))
    if params and params[0][1] == ADJUSTED and o.weights_bitwidth != 8:
        raise UsageError(
            f"--param_quantizer adjusted cannot be used with --weights_bitwidth {o.weights_bitwidth}"
        )
    if given.get("use_adjusted_weights_quantizer"):
        _deprecated("--use_adjusted_weights_quantizer", "use --param_quantizer adjusted")
        if o.weights_bitwidth != 8:
            log.warning(
                "--use_adjusted_weights_quantizer applies to 8-bit weights only; ignored with "
                "--weights_bitwidth %d",
                o.weights_bitwidth,
            )
        else:
            params.append(("--use_adjusted_weights_quantizer", ADJUSTED))
    param = _pick_quantizer(params, "weight")
    if param:
        o.param_quantizer_calibration, o.param_quantizer_schema = param
    act = _pick_quantizer(acts, "activation")
    if act:
        o.act_quantizer_calibration, o.act_quantizer_schema = act

    if given.get("optimizations"):
        _deprecated("--optimizations", "use --algorithms")
    o.apply_algorithms = list(dict.fromkeys(given.get("optimizations", []) + given.get("algorithms", [])))
    if "restrict_quantization_steps" in given:
        o.restrict_quantization_steps = _parse_steps(given["restrict_quantization_steps"], dialect)
    o.udo_package_path = _split_commas(given.get("udo_package_path"))
    if given.get("no_weight_quantization"):
        _deprecated("--no_weight_quantization", "it no longer has an effect: weights are quantized")
    if given.get("use_encoding_optimizations"):
        _deprecated(
            "--use_encoding_optimizations",
            "the target backend's encoding constraints (which avoid requantization) are always applied",
        )
    native_in = given.get("use_native_input_files", False)
    if given.get("use_native_dtype"):
        _deprecated("--use_native_dtype", "use --use_native_input_files")
        native_in = True

    if given.get("float_fallback"):
        if "input_list" in given:
            raise UsageError("--float_fallback cannot be used with --input_list")
        if not given.get("override_params"):
            raise UsageError("--float_fallback needs --override_params (the encodings come from the model)")
        o.enable_float_fallback = True
    elif "input_list" not in given:
        raise UsageError("--input_list is required (or --float_fallback with --override_params)")

    htp_socs = None
    overwrite = given.get("overwrite_cache_records", False)
    enable_htp = given.get("enable_htp", False)
    htp_options: dict[str, Any] = {}
    if given.get("use_float_io"):
        _deprecated(
            "--use_float_io", "use --enable_htp (here the HTP graph also gets float32 inputs and outputs)"
        )
        enable_htp = True
        htp_options["use_float_io"] = True
    if enable_htp:
        htp_socs = _split_commas([given["htp_socs"]]) if "htp_socs" in given else [DEFAULT_HTP_SOC]
    else:
        for name in ("htp_socs", "overwrite_cache_records"):
            if name in given:
                log.warning("--%s applies only with --enable_htp; ignored", name)
        overwrite = False
    _restrict_steps_fit(o, "--param_quantizer symmetric")
    return QuantizeCommand(
        input_dlc=_required_input(given),
        output_dlc=Path(given["output_dlc"]) if "output_dlc" in given else None,
        input_list=Path(given["input_list"]) if "input_list" in given else None,
        options=o,
        use_native_input_files=native_in,
        use_native_output_files=given.get("use_native_output_files", False),
        htp_socs=htp_socs,
        overwrite_cache_records=overwrite,
        htp_options=htp_options,
    )


def _qairt_command(dialect: str, given: dict[str, Any]) -> QuantizeCommand:
    o = QuantizerOptions()
    _common(given, o)
    for name in (
        "act_quantizer_calibration",
        "param_quantizer_calibration",
        "act_quantizer_schema",
        "param_quantizer_schema",
        "percentile_calibration_value",
        "target_backend",
        "target_soc_model",
    ):
        if name in given:
            setattr(o, name, given[name])
    for name in (
        "keep_weights_quantized",
        "adjust_bias_encoding",
        "ignore_quantization_overrides",
        "enable_float_fallback",
        "use_aimet_quantizer",
    ):
        setattr(o, name, given.get(name, False))
    o.apply_algorithms = list(dict.fromkeys(given.get("apply_algorithms", [])))
    o.preserve_io_datatype = given.get("preserve_io_datatype")
    o.op_package_lib = _split_commas(given.get("op_package_lib"))
    if "restrict_quantization_steps" in given:
        o.restrict_quantization_steps = _parse_steps(given["restrict_quantization_steps"], dialect)

    if "target_soc_model" in given and "target_backend" not in given:
        raise UsageError("--target_soc_model needs --target_backend")
    if o.enable_float_fallback:
        if "input_list" in given:
            raise UsageError("--enable_float_fallback cannot be used with --input_list")
        if o.ignore_quantization_overrides:
            raise UsageError("--enable_float_fallback cannot be used with --ignore_quantization_overrides")
    elif "input_list" not in given:
        raise UsageError("--input_list is required (or --enable_float_fallback to use the stored encodings)")
    if "percentile_calibration_value" in given and "percentile" not in (
        o.act_quantizer_calibration,
        o.param_quantizer_calibration,
    ):
        log.warning(
            "--percentile_calibration_value applies only with the percentile calibration method; ignored"
        )
    if o.adjust_bias_encoding and not o.use_per_channel_quantization:
        log.warning(
            "--adjust_bias_encoding applies only to per-channel weights "
            "(--use_per_channel_quantization); ignored"
        )
        o.adjust_bias_encoding = False
    _restrict_steps_fit(o, "--param_quantizer_schema symmetric")
    return QuantizeCommand(
        input_dlc=_required_input(given),
        output_dlc=Path(given["output_dlc"]) if "output_dlc" in given else None,
        input_list=Path(given["input_list"]) if "input_list" in given else None,
        options=o,
        use_native_input_files=given.get("use_native_input_files", False),
        use_native_output_files=given.get("use_native_output_files", False),
        dump_encoding_json=given.get("dump_encoding_json", False),
        encoding_json_version=given.get("dump_encoding_json_version", DEFAULT_ENCODING_JSON_VERSION),
        export_stripped_dlc=given.get("export_stripped_dlc", False),
        report=Path(given["report"]) if "report" in given else None,
    )


def _restrict_steps_fit(o: QuantizerOptions, symmetric_option: str) -> None:
    steps = o.restrict_quantization_steps
    if steps is None:
        return
    if o.param_quantizer_schema == "asymmetric":
        log.warning(
            "--restrict_quantization_steps applies only to symmetric weight encodings (%s); ignored",
            symmetric_option,
        )
        o.restrict_quantization_steps = None
        return
    lo, hi = steps
    bw = o.weights_bitwidth
    if lo < -(2 ** (bw - 1)) or hi > 2 ** (bw - 1) - 1:
        raise UsageError(
            f"--restrict_quantization_steps {hex(lo)},{hex(hi)} does not fit --weights_bitwidth {bw} "
            f"({hex(-(2 ** (bw - 1)))}..{hex(2 ** (bw - 1) - 1)})"
        )


def _required_input(given: dict[str, Any]) -> Path:
    if "input_dlc" not in given:
        raise UsageError("--input_dlc is required")
    return Path(given["input_dlc"])


def parse_command(dialect: str, argv: list[str], prog: str | None = None) -> QuantizeCommand:
    """Parse one quantizer command line into the :func:`quantize_file` call it asks for."""
    given = parse_args(dialect, argv, prog)
    if dialect in SNPE_DIALECTS:
        return _snpe_command(dialect, given)
    return _qairt_command(dialect, given)


def run_command(dialect: str, argv: list[str], prog: str | None = None) -> int:
    """Parse, quantize, write; return the exit status (errors are raised for the runner)."""
    from opendlc.quant_io import quantize_file

    try:
        command = parse_command(dialect, argv, prog)
    except _ParserExit as e:  # --help, --version
        return e.status
    progress = log_state.settings.console_level() <= logging.INFO
    if command.report is not None:
        from opendlc.analysis.files import check_quantize_report

        check_quantize_report(command.report, command.input_list)
    result = quantize_file(**command.kwargs(), progress=progress)
    log.info("wrote %s", result.output)
    if result.encodings_json is not None:
        log.info("wrote %s", result.encodings_json)
    if command.report is not None:
        from opendlc.analysis.files import report_after_quantize

        report_after_quantize(result.container, command, progress=progress)
    return 0
