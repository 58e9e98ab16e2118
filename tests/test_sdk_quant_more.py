"""The quantizer commands beyond single options: bad input, conflicts, deprecations, --config, outputs,
HTP cache records, AIMET, user-defined-op packages, --help, and the Python API."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import sdk_quant_models as sq
import yaml
from sdk_quant_models import ALL, QAIRT, SNPE

import opendlc.htp
from opendlc import container as dlc
from opendlc.cli.logging_options import LogSettings, configure_logging
from opendlc.cli.quant_options import build_parser, parse_command
from opendlc.errors import UsageError
from opendlc.quant.options import QuantizerOptions
from opendlc.quant_io import quantize_file, strip_container


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> sq.Case:
    return sq.conv_case(tmp_path_factory.mktemp("conv"))


def _parse(prog: str, args: list[str]):
    """parse_command with the runner's logging set up (warnings to the captured stderr)."""
    configure_logging(LogSettings(), prog)
    return parse_command(prog, args)


def _run(prog: str, args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = sq.run_command(prog, args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _one_error_line(err: str, prog: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"{prog.split()[0]}: error: "), err
    assert "Traceback" not in err
    return errors[0]


def _nothing_written(folder: Path, before: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == before  # no output, no temporary file left


# ---- bad input: one line, exit 2, no output file -------------------------------------------------
def _write_bad_files(case: sq.Case, wrong: Path) -> None:
    wrong.mkdir(exist_ok=True)
    (wrong / "small.raw").write_bytes(np.zeros(10, np.float32).tobytes())
    (wrong / "list.txt").write_text(f"{case.folder / 'raw' / 'x_0.raw'}\nsmall.raw\n")
    (wrong / "lacks.txt").write_text("q:=small.raw\n")
    (wrong / "missing_raw.txt").write_text("nothing_here.raw\n")
    (wrong / "bad.yaml").write_text("act_bitwidth: [16\n")
    (wrong / "unknown.yaml").write_text("act_bitwidht: 16\n")
    (wrong / "type.yaml").write_text("use_per_channel_quantization: 3\n")


# (id, commands, options after the usual input/output ones -- or a special setup --, words of the one line).
# "{w}" is a folder of bad files; a later --input_list wins over the usual one.
SYMMETRIC_SNPE = ["--param_quantizer=symmetric"]
SYMMETRIC_QAIRT = ["--param_quantizer_schema", "symmetric"]
BAD = [
    ("act-bitwidth-7", ALL, ["--act_bitwidth", "7"], "--act_bitwidth 7 is not supported"),
    ("weights-bitwidth-7", ALL, ["--weights_bitwidth=7"], "--weights_bitwidth 7 is not supported"),
    ("bias-bitwidth-16", ALL, ["--bias_bitwidth", "16"], "--bias_bitwidth 16 is not supported"),
    ("float-bitwidth-8", ALL, ["--float_bitwidth", "8"], "--float_bitwidth 8 is not supported"),
    ("bitwidth-7", SNPE, ["--bitwidth=7"], "--bitwidth 7 is not supported"),
    ("bitwidth-not-int", ALL, ["--act_bitwidth", "eight"], "--act_bitwidth"),
    ("percentile-80", QAIRT, ["--percentile_calibration_value", "80"], "must lie within 90 and 100"),
    (
        "unknown-calibration",
        QAIRT,
        ["--act_quantizer_calibration", "best"],
        "unknown calibration method 'best'",
    ),
    (
        "unknown-param-calibration",
        QAIRT,
        ["--param_quantizer_calibration=x"],
        "--param_quantizer_calibration",
    ),
    ("unknown-schema", QAIRT, ["--param_quantizer_schema", "sym"], "unknown quantization schema 'sym'"),
    (
        "unknown-legacy-quantizer",
        SNPE,
        ["--act_quantizer=adjusted"],
        "--act_quantizer 'adjusted' is not a quantizer",
    ),
    ("unknown-algorithm", QAIRT, ["--apply_algorithms", "nope"], "unknown algorithm 'nope'"),
    ("unknown-algorithm", SNPE, ["--algorithms=nope"], "unknown algorithm 'nope'"),
    (
        "unknown-soc",
        QAIRT,
        ["--target_backend", "HTP", "--target_soc_model", "sm0000"],
        "unknown SoC 'sm0000'",
    ),
    (
        "unknown-htp-soc",
        ("snpe-dlc-quantize",),
        ["--enable_htp", "--htp_socs=sm0000"],
        "unknown SoC 'sm0000'",
    ),
    ("unknown-backend", QAIRT, ["--target_backend", "NPU"], "unknown backend 'NPU'"),
    ("hex-bad-digit", SNPE, [*SYMMETRIC_SNPE, "--restrict_quantization_steps", "-0x80,0x7G"], "'0x7G'"),
    (
        "hex-decimal",
        QAIRT,
        [*SYMMETRIC_QAIRT, "--restrict_quantization_steps", "-128 127"],
        "'-128' is not a hexadecimal literal",
    ),
    ("hex-one-value", QAIRT, ["--restrict_quantization_steps", "0x7F"], "expected MIN and MAX"),
    (
        "steps-too-wide",
        SNPE,
        [*SYMMETRIC_SNPE, "--restrict_quantization_steps=-0x8000,0x7F7F"],
        "does not fit --weights_bitwidth 8",
    ),
    ("steps-order", QAIRT, [*SYMMETRIC_QAIRT, "--restrict_quantization_steps", "0x10 0x7F"], "MIN < 0 < MAX"),
    ("missing-list", ALL, ["--input_list", "{w}/absent.txt"], "absent.txt: no such input list"),
    ("list-names-unknown-input", ALL, ["--input_list", "{w}/lacks.txt"], "the model has no input 'q'"),
    (
        "raw-wrong-size",
        ALL,
        ["--input_list", "{w}/list.txt"],
        "small.raw: wrong size for input 'x' [1, 3, 8, 8] float32: expected 768 bytes, found 40",
    ),
    ("raw-missing", ALL, ["--input_list", "{w}/missing_raw.txt"], "nothing_here.raw does not exist"),
    ("no-input-list", ALL, "no-list", "--input_list is required"),
    ("no-input-dlc", ALL, "no-model-option", "--input_dlc is required"),
    ("input-missing", ALL, "missing-model", "absent.onnx: no such file"),
    ("unknown-option", ALL, ["--bogus"], "unrecognized arguments: --bogus"),
    ("no-abbreviation", QAIRT, ["--act_bit", "16"], "unrecognized arguments"),
    ("qairt-option-in-snpe", SNPE, ["--act_quantizer_calibration=sqnr"], "unrecognized arguments"),
    ("snpe-option-in-qairt", QAIRT, ["--override_params"], "unrecognized arguments"),
    (
        "bitwidth-with-weights",
        SNPE,
        ["--bitwidth=8", "--weights_bitwidth=8"],
        "--bitwidth cannot be mixed with --weights_bitwidth",
    ),
    (
        "bitwidth-with-act",
        SNPE,
        ["--bitwidth=16", "--act_bitwidth=16"],
        "--bitwidth cannot be mixed with --act_bitwidth",
    ),
    (
        "bitwidth-with-bias",
        SNPE,
        ["--bitwidth=16", "--bias_bitwidth=32"],
        "--bitwidth cannot be mixed with --bias_bitwidth",
    ),
    (
        "float-fallback-with-list",
        SNPE,
        ["--float_fallback", "--override_params"],
        "--float_fallback cannot be used with --input_list",
    ),
    (
        "float-fallback-without-override",
        SNPE,
        "fallback-no-override",
        "--float_fallback needs --override_params",
    ),
    (
        "enable-float-fallback-with-list",
        QAIRT,
        ["--enable_float_fallback"],
        "--enable_float_fallback cannot be used with --input_list",
    ),
    (
        "enable-float-fallback-ignore",
        QAIRT,
        "fallback-ignore",
        "--enable_float_fallback cannot be used with --ignore_quantization_overrides",
    ),
    (
        "soc-without-backend",
        QAIRT,
        ["--target_soc_model", "sm8650"],
        "--target_soc_model needs --target_backend",
    ),
    (
        "8w16a-on-dsp",
        QAIRT,
        ["--target_backend", "DSP", "--act_bitwidth", "16"],
        "--target_backend DSP with --weights_bitwidth 8 --act_bitwidth 16",
    ),
    (
        "4-bit-weights-on-hta",
        QAIRT,
        ["--target_backend", "HTA", "--weights_bitwidth", "4"],
        "--target_backend HTA",
    ),
    (
        "per-channel-on-hta",
        QAIRT,
        ["--target_backend", "hta", "--use_per_channel_quantization"],
        "--use_per_channel_quantization: --target_backend HTA",
    ),
    (
        "float16-on-dsp",
        QAIRT,
        ["--target_backend", "DSP", "--float_bitwidth", "16"],
        "--float_bitwidth 16: --target_backend DSP",
    ),
    (
        "quantizer-mix",
        SNPE,
        ["--param_quantizer=tf", "--use_enhanced_quantizer"],
        "--param_quantizer cannot be mixed with --use_enhanced_quantizer",
    ),
    (
        "quantizer-mix-symmetric",
        SNPE,
        ["--param_quantizer=enhanced", "--use_symmetric_quantize_weights"],
        "--param_quantizer cannot be mixed with --use_symmetric_quantize_weights",
    ),
    (
        "adjusted-16-bit",
        SNPE,
        ["--param_quantizer=adjusted", "--weights_bitwidth=16"],
        "--param_quantizer adjusted cannot be used with --weights_bitwidth 16",
    ),
    (
        "per-row-bias-alone",
        ALL,
        ["--enable_per_row_quantized_bias"],
        "--enable_per_row_quantized_bias needs --use_per_row_quantization",
    ),
    ("preserve-unknown-name", QAIRT, ["--preserve_io_datatype", "x", "nope"], "no input or output 'nope'"),
    ("output-is-input", ALL, "output-is-input", "would overwrite the input"),
    ("output-folder-missing", ALL, "output-folder-missing", "does not exist"),
    ("json-version", ("opendlc quantize",), ["--dump_encoding_json_version", "2.0"], "invalid choice: '2.0'"),
    ("config-missing", QAIRT, ["--config", "{w}/none.yaml"], "none.yaml: no such file"),
    ("config-bad-yaml", QAIRT, ["-c", "{w}/bad.yaml"], "not valid YAML"),
    ("config-unknown-key", QAIRT, ["--config", "{w}/unknown.yaml"], "unknown option 'act_bitwidht'"),
    ("config-wrong-type", QAIRT, ["--config", "{w}/type.yaml"], "takes true or false"),
    (
        "op-package-format",
        QAIRT,
        ["--op_package_lib", "libfoo.so"],
        "expected LIBRARY_PATH:INTERFACE_PROVIDER",
    ),
    (
        "op-package-missing",
        QAIRT,
        ["-opl", "/no/libfoo.so:FooProvider"],
        "/no/libfoo.so: no such op package library",
    ),
    (
        "udo-package-missing",
        SNPE,
        ["--udo_package_path=/no/libUdoReg.so"],
        "/no/libUdoReg.so: no such registration library",
    ),
]


@pytest.mark.parametrize(
    "row_id,prog,extra,words",
    [pytest.param(r[0], p, r[2], r[3], id=f"{r[0]}[{p}]") for r in BAD for p in r[1]],
)
def test_bad_input_is_one_line_exit_2_and_no_output(row_id, prog, extra, words, case, tmp_path, capsys):
    wrong = tmp_path / "w"
    _write_bad_files(case, wrong)
    out = tmp_path / "out.dlc"
    model, lst = case.model, case.input_list
    if extra == "no-list":
        args = sq.io_args(prog, model, None, out)
    elif extra == "no-model-option":
        full = sq.io_args(prog, model, lst, out)
        drop = {i for i, a in enumerate(full) if str(model) in a}
        drop |= {i - 1 for i in drop if full[i - 1] in ("-i", "--input_dlc")}
        args = [a for i, a in enumerate(full) if i not in drop]
    elif extra == "missing-model":
        args = sq.io_args(prog, tmp_path / "absent.onnx", lst, out)
    elif extra == "output-is-input":
        out = tmp_path / "model.onnx"
        out.write_bytes(model.read_bytes())
        args = sq.io_args(prog, out, lst, out)
    elif extra == "output-folder-missing":
        out = tmp_path / "no" / "out.dlc"
        args = sq.io_args(prog, model, lst, out)
    elif extra == "fallback-no-override":
        args = sq.io_args(prog, model, None, out) + ["--float_fallback"]
    elif extra == "fallback-ignore":
        args = sq.io_args(prog, model, None, out) + ["-f", "--ignore_quantization_overrides"]
    else:
        args = sq.io_args(prog, model, lst, out) + [a.replace("{w}", str(wrong)) for a in extra]
    before = {p.name for p in tmp_path.iterdir()}
    rc, stdout, err = _run(prog, args, capsys)
    assert rc == 2, err
    line = _one_error_line(err, prog)
    assert words in line, line
    assert stdout == ""
    _nothing_written(tmp_path, before)


def test_failure_while_calibrating_leaves_nothing(case, tmp_path, capsys, monkeypatch):
    """A file that turns bad after the up-front checks (here: shrunk while calibrating) fails cleanly."""
    import opendlc.quant_io as qio

    monkeypatch.setattr(qio, "check_input_sizes", lambda *a, **k: None)  # skip the up-front check
    folder = tmp_path / "data"
    bad = sq.write_case(folder, sq.conv_model(), {"x": sq.conv_samples(3)})
    (folder / "raw" / "x_2.raw").write_bytes(b"\0" * 8)
    before = {p.name for p in folder.iterdir()}
    rc, _, err = _run("qairt-quantizer", ["-i", str(bad.model), "-l", str(bad.input_list)], capsys)
    assert rc == 2 and "x_2.raw: wrong size for input 'x'" in _one_error_line(err, "qairt-quantizer")
    _nothing_written(folder, before)


# ---- defaults, both spellings, inputs untouched --------------------------------------------------
@pytest.mark.parametrize("prog", ALL)
def test_default_output_beside_the_input_and_input_untouched(prog, case, tmp_path, capsys):
    model = tmp_path / "net.onnx"
    model.write_bytes(case.model.read_bytes())
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    rc, _, err = _run(prog, sq.io_args(prog, model, case.input_list, None), capsys)
    assert rc == 0, err
    out = tmp_path / "net_quantized.dlc"
    assert dlc.load(out).quantized
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
    # a container in, a container out, named the same way
    rc, _, err = _run(prog, sq.io_args(prog, out, case.input_list, None), capsys)
    assert rc == 0 and (tmp_path / "net_quantized_quantized.dlc").exists(), err


@pytest.mark.parametrize("prog", ALL)
def test_opt_equals_value_and_opt_space_value_agree(prog, case, tmp_path, capsys):
    spaced = ["--input_dlc", str(case.model), "--input_list", str(case.input_list), "--act_bitwidth", "16"]
    joined = [f"--input_dlc={case.model}", f"--input_list={case.input_list}", "--act_bitwidth=16"]
    if prog in SNPE:
        spaced += ["--restrict_quantization_steps", "-0x40,0x3F", "--param_quantizer", "symmetric"]
        joined += ["--restrict_quantization_steps=-0x40,0x3F", "--param_quantizer=symmetric"]
    else:
        spaced += ["--restrict_quantization_steps", "-0x40 0x3F", "--param_quantizer_schema", "symmetric"]
        joined += ["--restrict_quantization_steps=-0x40 0x3F", "--param_quantizer_schema=symmetric"]
    results = []
    for i, args in enumerate((spaced, joined)):
        out = tmp_path / f"o{i}.dlc"
        rc, _, err = _run(prog, [*args, "--output_dlc", str(out)], capsys)
        assert rc == 0, err
        results.append({n: t.encodings for n, t in dlc.load(out).encodings.tensors.items()})
    assert results[0] == results[1]
    assert {e.bitwidth for e in results[0]["r1"]} == {16}


def test_qairt_short_options_and_debug_level(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --debug writes its log file in the current folder
    out = tmp_path / "o.dlc"
    args = [
        "-i",
        str(case.model),
        "-l",
        str(case.input_list),
        "-o",
        str(out),
        "--debug",
        "--act_bitwidth",
        "16",
    ]
    rc, _, err = _run("qairt-quantizer", args, capsys)
    assert rc == 0, err
    assert "DEBUG" in err  # --debug [DEBUG] is the logging option: debug messages on
    rc, _, err = _run("qairt-quantizer", ["--debug", "2", *args[:6]], capsys)
    assert rc == 0, err
    assert (tmp_path / "qairt-quantizer.log").is_file()


# ---- deprecations: one warning line each, naming the replacement ---------------------------------
@pytest.mark.parametrize(
    "option,replacement",
    [
        ("--use_enhanced_quantizer", "--param_quantizer enhanced --act_quantizer enhanced"),
        ("--use_adjusted_weights_quantizer", "--param_quantizer adjusted"),
        ("--use_symmetric_quantize_weights", "--param_quantizer symmetric"),
        ("--optimizations=cle", "--algorithms"),
        ("--axis_quant", "--use_per_channel_quantization"),
        ("--use_native_dtype", "--use_native_input_files"),
        ("--bitwidth=8", "--weights_bitwidth 8 --act_bitwidth 8 --bias_bitwidth 8"),
        ("--no_weight_quantization", "no longer has an effect"),
        ("--use_encoding_optimizations", "always applied"),
    ],
)
@pytest.mark.parametrize("prog", SNPE)
def test_deprecated_option_warns_once(prog, option, replacement, case, tmp_path, capsys):
    args = sq.io_args(prog, case.model, case.input_list, tmp_path / "o.dlc") + [option]
    _parse(prog, args)
    err = capsys.readouterr().err
    name = option.split("=")[0]
    lines = [ln for ln in err.splitlines() if name in ln]
    assert len(lines) == 1 and f"{name} is deprecated" in lines[0] and replacement in lines[0], err


def test_use_float_io_is_enable_htp(case, tmp_path, capsys):
    args = sq.io_args("snpe-dlc-quantize", case.model, case.input_list, tmp_path / "o.dlc")
    cmd = _parse("snpe-dlc-quantize", [*args, "--use_float_io", "--htp_socs", "sm8550,sm8650"])
    assert cmd.htp_socs == ["sm8550", "sm8650"]
    assert cmd.htp_options == {"use_float_io": True}
    assert "--use_float_io is deprecated; use --enable_htp" in capsys.readouterr().err
    # without --enable_htp, the HTP options only warn
    cmd = _parse("snpe-dlc-quantize", [*args, "--htp_socs=sm8650", "--overwrite_cache_records"])
    assert cmd.htp_socs is None and not cmd.overwrite_cache_records
    assert capsys.readouterr().err.count("applies only with --enable_htp") == 2


def test_only_applies_options_warn_and_are_ignored(case, capsys):
    base = sq.io_args("qairt-quantizer", case.model, case.input_list, None)
    cmd = _parse("qairt-quantizer", [*base, "--adjust_bias_encoding", "--percentile_calibration_value", "95"])
    assert not cmd.options.adjust_bias_encoding
    err = capsys.readouterr().err
    assert "--adjust_bias_encoding applies only to per-channel" in err
    assert "--percentile_calibration_value applies only with the percentile" in err
    cmd = _parse("qairt-quantizer", [*base, "--restrict_quantization_steps", "-0x40 0x3F"])
    assert cmd.options.restrict_quantization_steps is None
    assert "--restrict_quantization_steps applies only to symmetric" in capsys.readouterr().err
    cmd = _parse(
        "snpe-dlc-quant",
        [
            f"--input_dlc={case.model}",
            f"--input_list={case.input_list}",
            "--use_adjusted_weights_quantizer",
            "--weights_bitwidth=16",
        ],
    )
    assert cmd.options.param_quantizer_calibration == "min-max"
    assert "applies to 8-bit weights only" in capsys.readouterr().err


# ---- --config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prog", QAIRT)
def test_config_yaml_sets_options_and_the_command_line_wins(prog, case, tmp_path, capsys):
    cfg = tmp_path / "quant.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "input_list": str(case.input_list),
                "act_bitwidth": 16,
                "weights_bitwidth": 16,
                "use_per_channel_quantization": True,
                "param_quantizer_schema": "symmetric",
                "restrict_quantization_steps": [-0x4000, 0x3FFF],  # YAML numbers become hex literals
                "preserve_io_datatype": ["x"],
                "dump_encoding_json": True,
            }
        )
    )
    out = tmp_path / "o.dlc"
    rc, _, err = _run(
        prog,
        [
            "-i",
            str(case.model),
            "-o",
            str(out),
            "-c",
            str(cfg),
            "--weights_bitwidth",
            "8",
            "--restrict_quantization_steps",
            "-0x40 0x3F",
        ],
        capsys,
    )
    assert rc == 0, err
    enc = dlc.load(out).encodings
    assert enc["r1"].bitwidth == 16  # from the file
    assert enc["w1"].bitwidth == 8  # the command line wins
    assert len(enc["w1"].encodings) == 4 and enc.meta["preserve_io_datatype"] == ["x"]
    e = enc["w2"].encodings[1]
    assert round(e.min / e.scale) == -0x40
    assert (tmp_path / "o_encoding.json").exists()


def test_config_list_and_flag_forms(case, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "apply_algorithms: cle\npreserve_io_datatype: true\n"
        "op_package_lib: a.so:A,b.so:B\n--act_bitwidth: 16\n"
    )
    cmd = _parse("qairt-quantizer", ["-i", str(case.model), "-l", str(case.input_list), "-c", str(cfg)])
    assert cmd.options.apply_algorithms == ["cle"]
    assert cmd.options.preserve_io_datatype == []
    assert cmd.options.op_package_lib == ["a.so:A", "b.so:B"]
    assert cmd.options.act_bitwidth == 16


# ---- outputs: JSON dump, stripped container, Python API ------------------------------------------
def test_python_api_writes_the_same_as_the_command(case, tmp_path, capsys):
    opts = QuantizerOptions(act_bitwidth=16, use_per_channel_quantization=True)
    result = quantize_file(
        case.model,
        tmp_path / "api.dlc",
        input_list=case.input_list,
        options=opts,
        dump_encoding_json=True,
        encoding_json_version="1.0.0",
        progress=False,
    )
    assert result.output == tmp_path / "api.dlc" and result.encodings_json == tmp_path / "api_encoding.json"
    rc, _, err = _run(
        "opendlc quantize",
        [
            "-i",
            str(case.model),
            "-l",
            str(case.input_list),
            "-o",
            str(tmp_path / "cli.dlc"),
            "--act_bitwidth",
            "16",
            "--use_per_channel_quantization",
        ],
        capsys,
    )
    assert rc == 0, err
    cli = dlc.load(tmp_path / "cli.dlc").encodings
    assert {n: t.encodings for n, t in cli.tensors.items()} == {
        n: t.encodings for n, t in result.container.encodings.tensors.items()
    }
    assert json.loads(result.encodings_json.read_text())["version"] == "1.0.0"


def test_stripped_container_still_loads_and_composes(case, tmp_path):
    full = quantize_file(case.model, tmp_path / "full.dlc", input_list=case.input_list, progress=False)
    stripped = strip_container(full.container)
    stripped.write(tmp_path / "s.dlc")
    back = dlc.load(tmp_path / "s.dlc")
    assert back.quantized and back.meta == {} and back.overrides is None
    assert (tmp_path / "s.dlc").stat().st_size < (tmp_path / "full.dlc").stat().st_size
    import onnxruntime as ort

    from opendlc.quant.export import to_qdq_model  # graph composition still works from what is kept

    qdq = to_qdq_model(back)
    sess = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": case.data["x"][0]})[0]
    assert y.shape == (1, 10) and np.isfinite(y).all()


# ---- HTP cache records (snpe-dlc-quantize --enable_htp) ------------------------------------------
def test_enable_htp_hands_the_quantized_container_to_htp_preparation(case, tmp_path, capsys, monkeypatch):
    """The plumbing: SoCs and --overwrite_cache_records reach opendlc.htp.prepare_container, and what it
    returns is what is written.  (A recording stand-in for the preparer; the real one is tested below.)"""
    seen = {}

    def prepare_container(container, *, socs, overwrite, progress, **options):
        seen.update(socs=socs, overwrite=overwrite, quantized=container.quantized, options=options)
        container.records.append(dlc.CacheRecord("rec0", {"soc": socs[0]}, b"prepared"))
        return container

    monkeypatch.setattr(opendlc.htp, "prepare_container", prepare_container, raising=False)
    out = tmp_path / "o.dlc"
    args = sq.io_args("snpe-dlc-quantize", case.model, case.input_list, out)
    rc, _, err = _run(
        "snpe-dlc-quantize",
        [*args, "--enable_htp", "--htp_socs", "SM8550,sm8650", "--overwrite_cache_records"],
        capsys,
    )
    assert rc == 0, err
    assert seen == {"socs": ["sm8550", "sm8650"], "overwrite": True, "quantized": True, "options": {}}
    assert [r.data for r in dlc.load(out).records] == [b"prepared"]
    rc, _, err = _run("snpe-dlc-quantize", [*args, "--enable_htp"], capsys)
    assert rc == 0 and seen["socs"] == ["sm8650"] and seen["overwrite"] is False  # the default SoC
    rc, _, err = _run("snpe-dlc-quantize", [*args, "--use_float_io"], capsys)
    assert rc == 0 and seen["options"] == {"use_float_io": True}, err


def test_enable_htp_writes_real_cache_records(case, tmp_path, capsys):
    if not hasattr(opendlc.htp, "prepare_container"):
        rc, _, err = _run(
            "snpe-dlc-quantize",
            sq.io_args("snpe-dlc-quantize", case.model, case.input_list, tmp_path / "o.dlc")
            + ["--enable_htp"],
            capsys,
        )
        assert rc == 1 and "not available in this version" in _one_error_line(err, "snpe-dlc-quantize")
        assert not (tmp_path / "o.dlc").exists()
        pytest.fail("opendlc.htp.prepare_container does not exist yet (HTP graph preparation has not landed)")
    out = tmp_path / "o.dlc"
    rc, _, err = _run(
        "snpe-dlc-quantize",
        sq.io_args("snpe-dlc-quantize", case.model, case.input_list, out)
        + ["--enable_htp", "--htp_socs=sm8650"],
        capsys,
    )
    assert rc == 0, err
    records = dlc.load(out).records
    assert records and all(r.data for r in records)


# ---- AIMET ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("prog", QAIRT)
def test_use_aimet_quantizer(prog, case, tmp_path, capsys):
    out = tmp_path / "o.dlc"
    rc, _, err = _run(
        prog, sq.io_args(prog, case.model, case.input_list, out) + ["--use_aimet_quantizer"], capsys
    )
    if importlib.util.find_spec("aimet_onnx") is None:
        assert rc == 1
        assert "pip install torch==2.13.0 aimet-onnx" in _one_error_line(err, prog)
        assert not out.exists()
    else:
        assert rc == 0, err
        enc = dlc.load(out).encodings
        assert enc.meta["quantizer"]["use_aimet_quantizer"] is True
        assert {t.encodings[0].bitwidth for t in enc.of_kind("activation") if t.dtype == "int"} == {8}


# ---- user-defined ops ----------------------------------------------------------------------------
def test_package_options_reach_the_quantizer(case, tmp_path):
    libs = [tmp_path / n for n in ("libA.so", "libB.so", "libReg.so")]
    for lib in libs:
        lib.write_bytes(b"\x7fELF")
    cmd = _parse(
        "qairt-quantizer",
        [
            "-i",
            str(case.model),
            "-l",
            str(case.input_list),
            "-opl",
            f"{libs[0]}:AProvider,{libs[1]}:BProvider",
        ],
    )
    assert cmd.options.op_package_lib == [f"{libs[0]}:AProvider", f"{libs[1]}:BProvider"]
    cmd = _parse(
        "snpe-dlc-quant",
        [
            f"--input_dlc={case.model}",
            f"--input_list={case.input_list}",
            f"--udo_package_path={libs[2]},{libs[0]}",
            "--udo_package_path",
            str(libs[1]),
        ],
    )
    assert cmd.options.udo_package_path == [str(libs[2]), str(libs[0]), str(libs[1])]


# ---- --help, --version ---------------------------------------------------------------------------
@pytest.mark.parametrize("prog", ALL)
def test_help_lists_every_option_in_our_words(prog, capsys):
    rc, out, _ = _run(prog, ["--help"], capsys)
    assert rc == 0
    for action in build_parser(prog)._actions:
        for flag in action.option_strings:
            assert flag in out, flag
    for log_opt in ("--verbose", "--quiet", "--silent", "--debug", "--log-mask", "--log-file", "--log-dir"):
        assert log_opt in out
    # not the SDK's sentences
    for sdk in (
        "Use this option to",
        "Selects the bitwidth to use when quantizing",
        "Indicates the weight/bias quantizer",
    ):
        assert sdk not in out


@pytest.mark.parametrize("prog", SNPE)
def test_version(prog, capsys):
    rc, out, _ = _run(prog, ["--version"], capsys)
    assert rc == 0 and out.startswith(prog) and "opendlc" in out


def test_aimet_path_refuses_what_aimet_cannot_do():
    from opendlc.aimet_quant import check_aimet_options

    assert check_aimet_options(QuantizerOptions()) == "min_max"
    both = QuantizerOptions(act_quantizer_calibration="enhanced", param_quantizer_calibration="enhanced")
    assert check_aimet_options(both) == "tf_enhanced"
    for bad, words in (
        (QuantizerOptions(param_quantizer_schema="symmetric"), "--param_quantizer_schema"),
        (QuantizerOptions(use_per_row_quantization=True), "--use_per_row_quantization"),
        (QuantizerOptions(act_quantizer_calibration="enhanced"), "one calibration method"),
        (
            QuantizerOptions(act_quantizer_calibration="mse", param_quantizer_calibration="mse"),
            "'mse' has no aimet-onnx equivalent",
        ),
    ):
        with pytest.raises(UsageError, match=words):
            check_aimet_options(bad)
