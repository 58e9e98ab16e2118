"""Every documented option of snpe-dlc-quant, snpe-dlc-quantize, qairt-quantizer and opendlc quantize,
passed through each command that has it, with its effect checked on the output container or encodings."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import sdk_quant_models as sq
from onnx import numpy_helper
from sdk_quant_models import ALL, QAIRT, SNPE

from opendlc import container as dlc
from opendlc.algorithms import Algorithm, Phase
from opendlc.encodings import EncodingSet
from opendlc.hookspecs import hookimpl
from opendlc.plugin_manager import PluginInfo, get_plugin_manager, reset_plugin_manager
from opendlc.plugins.commands.convert import convert_model


# ---- a test algorithm plugin, so --algorithms/--apply_algorithms have a visible effect -----------------
class TagModel(Algorithm):
    name = "test-tag-model"
    description = "marks the model (test only)"
    phase = Phase.BEFORE_CALIBRATION

    def apply(self, model, context):
        model.graph.doc_string = "tagged by test-tag-model"
        return model


class _TestPlugin:
    @hookimpl
    def register_algorithms(self):
        return [TagModel()]


@pytest.fixture(autouse=True)
def plugins_with_test_algorithm():
    reset_plugin_manager()
    get_plugin_manager().register(_TestPlugin(), PluginInfo("test_algorithm", __name__, "tests", ""))
    yield
    reset_plugin_manager()


# ---- cases --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, sq.Case]:
    root = tmp_path_factory.mktemp("cases")
    conv = sq.conv_case(root / "conv")
    # the same model converted with stored overrides (for --override_params, float fallback, stripping)
    ovr = root / "conv" / "with_overrides.dlc"
    convert_model(conv.model, ovr, sq.overrides_file(root / "conv"))
    rng = np.random.default_rng(3)
    two = sq.write_case(
        root / "two",
        sq.two_input_model(),
        {
            "z": [(rng.normal(size=(1, 4, 8, 8)) * 10).astype(np.float32) for _ in range(4)],
            "x": [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(4)],
        },
        header="#add %c",
    )
    u8 = sq.write_case(
        root / "u8",
        sq.uint8_model(),
        {"u": [rng.integers(0, 201, size=(1, 3, 8, 8)).astype(np.uint8) for _ in range(4)]},
    )
    u8.data["u"][0].flat[0] = 200
    u8.data["u"][0].tofile(root / "u8" / "raw" / "u_0.raw")
    return {
        "conv": conv,
        "overrides": sq.Case(conv.folder, ovr, conv.input_list, conv.data),
        "two": two,
        "u8": u8,
    }


def opt(prog: str, name: str, *values: str) -> list[str]:
    """An option as the command's users write it: SNPE's --opt=value, qairt-quantizer's --opt value."""
    if not values:
        return [f"--{name}"]
    if prog in SNPE and len(values) == 1:
        return [f"--{name}={values[0]}"]
    return [f"--{name}", *values]


@dataclass
class Run:
    prog: str
    case: sq.Case
    output: Path
    err: str
    container: dlc.Container
    rerun: Callable[[list[str]], dlc.Container]
    extra: dict = field(default_factory=dict)

    @property
    def enc(self) -> EncodingSet:
        assert self.container.encodings is not None
        return self.container.encodings

    def quantizer(self) -> dict:
        return self.enc.meta["quantizer"]


def _run(prog, case, args, out, capsys, *, with_list=True) -> tuple[int, str]:
    capsys.readouterr()
    rc = sq.run_command(
        prog, sq.io_args(prog, case.model, case.input_list if with_list else None, out) + args
    )
    return rc, capsys.readouterr().err


def _run_ok(prog, case, args, tmp_path, capsys, *, with_list=True) -> Run:
    out = tmp_path / "out.dlc"
    rc, err = _run(prog, case, args, out, capsys, with_list=with_list)
    assert rc == 0, err
    assert "error" not in err, err

    def rerun(more: list[str]) -> dlc.Container:
        o = tmp_path / f"rerun{len(list(tmp_path.iterdir()))}.dlc"
        rc2, err2 = _run(prog, case, more, o, capsys, with_list=with_list)
        assert rc2 == 0, err2
        return dlc.load(o)

    return Run(prog, case, out, err, dlc.load(out), rerun)


# ---- the checks ----------------------------------------------------------------------------------------
ACTS = ("x", "r1", "c2", "mm", "y")  # calibrated activations of conv_model (s, f: fixed by HTP)
WEIGHTS = ("w1", "w2", "wm", "wg")
BIASES = ("b1", "b2", "bg")


def _bits(r: Run, names) -> set[int]:
    return {r.enc[n].bitwidth for n in names}


def check_defaults(r: Run) -> None:
    assert _bits(r, ACTS) == {8} and _bits(r, WEIGHTS) == {8} and _bits(r, BIASES) == {8}
    q = r.quantizer()
    assert (q["act_quantizer_calibration"], q["param_quantizer_calibration"]) == ("min-max", "min-max")
    assert (q["act_quantizer_schema"], q["param_quantizer_schema"]) == ("asymmetric", "asymmetric")
    assert q["target_backend"] == "HTP"
    # min-max: the input's range covers exactly what the samples hold (within one step)
    data = np.concatenate([a.ravel() for a in r.case.data["x"]])
    e = r.enc["x"].encodings[0]  # (zero exactly representable moves the ends by up to one step)
    assert e.min <= data.min() + e.scale and e.max >= data.max() - e.scale
    assert e.max - e.min <= (data.max() - data.min()) + 2 * e.scale
    assert not e.is_symmetric and e.offset < 0  # asymmetric: zero point inside the range
    assert all(not r.enc[w].encodings[0].is_symmetric for w in WEIGHTS)
    # HTP constraint: Sigmoid's output has the fixed [0, 1] encoding
    s = r.enc["s"].encodings[0]
    assert s.offset == 0 and s.scale == pytest.approx(1 / 255)


def check_act16(r):
    assert _bits(r, ACTS) == {16} and _bits(r, WEIGHTS) == {8}


def check_w16(r):
    assert _bits(r, WEIGHTS) == {16} and _bits(r, ACTS) == {8}


def check_w4(r):
    assert _bits(r, ("w1", "w2", "wm", "wg")) == {4}


def check_bias32(r):
    assert _bits(r, BIASES) == {32} and _bits(r, WEIGHTS) == {8}


def check_bitwidth16(r):
    assert _bits(r, ACTS) == {16} and _bits(r, WEIGHTS) == {16} and _bits(r, BIASES) == {32}
    assert "--bitwidth is deprecated" in r.err and "--weights_bitwidth 16" in r.err


def check_per_channel(r):
    for name, channels in (("w1", 4), ("w2", 6)):
        t = r.enc[name]
        assert t.axis == 0 and len(t.encodings) == channels
    assert len(r.enc["wm"].encodings) == 1  # MatMul is per-row, not per-channel


def check_axis_quant(r):
    check_per_channel(r)
    assert "--axis_quant is deprecated; use --use_per_channel_quantization" in r.err


def check_per_row(r):
    assert r.enc["wm"].axis == 1 and len(r.enc["wm"].encodings) == 16
    assert len(r.enc["w1"].encodings) == 1  # convolutions stay per-tensor
    assert len(r.enc["bg"].encodings) == 1  # biases per-tensor unless asked


def check_per_row_bias(r):
    assert len(r.enc["wg"].encodings) == 10 and len(r.enc["bg"].encodings) == 10


def _steps(e) -> tuple[int, int]:
    return round(e.min / e.scale), round(e.max / e.scale)


def check_restrict_steps(r):
    for w in WEIGHTS:
        e = r.enc[w].encodings[0]
        assert e.offset == 0 and e.is_symmetric
        assert _steps(e) == (-0x40, 0x3F)


def check_restrict_steps_16(r):
    for w in WEIGHTS:
        assert _steps(r.enc[w].encodings[0]) == (-0x8000, 0x7F7F)


def check_param_symmetric(r):
    for w in WEIGHTS:
        e = r.enc[w].encodings[0]
        assert e.offset == 0 and e.is_symmetric and e.signed
        assert _steps(e) == (-128, 127)
    assert not r.enc["x"].encodings[0].is_symmetric


def check_symmetric_weights_deprecated(r):
    check_param_symmetric(r)
    assert "--use_symmetric_quantize_weights is deprecated; use --param_quantizer symmetric" in r.err


def check_act_symmetric(r):
    for a in ("x", "c2", "mm", "y"):
        e = r.enc[a].encodings[0]
        assert e.offset == 0 and e.is_symmetric
    assert not r.enc["w1"].encodings[0].is_symmetric


def check_act_unsignedsymmetric(r):
    r1 = r.enc["r1"].encodings[0]  # after Relu: non-negative, so unsigned with offset 0
    assert r1.offset == 0 and not r1.signed and r1.min == 0
    assert r.quantizer()["act_quantizer_schema"] == "unsignedsymmetric"


def check_param_unsignedsymmetric(r):
    assert all(r.enc[w].encodings[0].offset == 0 for w in WEIGHTS)
    assert r.quantizer()["param_quantizer_schema"] == "unsignedsymmetric"


def _narrower_than_min_max(r, name: str) -> None:
    base = r.rerun([]).encodings[name].encodings[0]
    e = r.enc[name].encodings[0]
    assert e.max - e.min < 0.8 * (base.max - base.min), (e, base)


def check_percentile(r):
    # the outliers (40, -35, 30) are left out of the input's range
    _narrower_than_min_max(r, "x")
    assert r.quantizer()["percentile_calibration_value"] == 90.0
    wider = r.rerun(opt(r.prog, "act_quantizer_calibration", "percentile")).encodings["x"].encodings[0]
    e = r.enc["x"].encodings[0]
    assert e.max - e.min < wider.max - wider.min  # 90 keeps less than the default 99.99


def _method_used(kind: str, method: str):
    def check(r):
        q = r.quantizer()
        assert q[f"{kind}_quantizer_calibration"] == method
        names = ("x",) if kind == "act" else ("w1", "w2")
        base = r.rerun([]).encodings
        for n in names:
            e, b = r.enc[n].encodings[0], base[n].encodings[0]
            assert np.isfinite([e.scale, e.min, e.max]).all() and e.scale > 0
            assert e.min >= b.min - 2 * b.scale and e.max <= b.max + 2 * b.scale  # within min-max

    return check


def check_enhanced_both(r):
    q = r.quantizer()
    assert q["act_quantizer_calibration"] == q["param_quantizer_calibration"] == "enhanced"
    _method_used("act", "enhanced")(r)
    _method_used("param", "enhanced")(r)


def check_use_enhanced(r):
    check_enhanced_both(r)
    assert (
        "--use_enhanced_quantizer is deprecated; use --param_quantizer enhanced --act_quantizer enhanced"
        in r.err
    )


def check_adjusted(r):
    assert r.quantizer()["param_quantizer_calibration"] == "adjusted"
    assert r.quantizer()["act_quantizer_calibration"] == "min-max"


def check_use_adjusted(r):
    check_adjusted(r)
    assert "--use_adjusted_weights_quantizer is deprecated; use --param_quantizer adjusted" in r.err


def check_algorithm(r):
    assert r.container.model.graph.doc_string == "tagged by test-tag-model"
    assert r.quantizer()["apply_algorithms"] == ["test-tag-model"]


def check_optimizations(r):
    check_algorithm(r)
    assert "--optimizations is deprecated; use --algorithms" in r.err


def check_overrides_used(r):
    assert r.enc["r1"].source == "overrides" and r.enc["r1"].encodings[0].max == pytest.approx(6.0, abs=0.05)
    assert r.enc["w1"].source == "overrides"


def check_overrides_ignored(r):
    assert r.enc["r1"].source == "calibration" and r.enc["w1"].source == "calibration"


def check_float_fallback(r):
    check_overrides_used(r)
    floats = [t for t in r.enc.tensors.values() if t.dtype == "float"]
    assert floats and all(t.float_bitwidth == 32 for t in floats)
    assert r.enc.meta["samples"] == 0


def check_float_fallback_16(r):
    floats = [t for t in r.enc.tensors.values() if t.dtype == "float"]
    assert floats and all(t.float_bitwidth == 16 for t in floats)


def check_float_bias_16(r):
    float_biases = [r.enc[b] for b in BIASES if r.enc[b].dtype == "float"]
    assert float_biases and all(t.float_bitwidth == 16 for t in float_biases)
    assert all(t.float_bitwidth == 32 for t in r.enc.of_kind("activation") if t.dtype == "float")


def check_keep_weights_quantized(r):
    base = r.rerun(opt(r.prog, "enable_float_fallback"))
    floated = [w for w in WEIGHTS if base.encodings[w].dtype == "float"]
    assert floated  # without the option, weights of float ops are float
    assert all(r.enc[w].dtype == "int" for w in floated)


def check_adjust_bias(r):
    # channel 0 of w2 is tiny and its bias 1000: the weight scale is widened so the 32-bit bias fits
    w2 = next(t for t in sq.conv_model().graph.initializer if t.name == "w2")
    from_range = float(np.abs(numpy_helper.to_array(w2)[0]).max()) / 127
    assert r.enc["w2"].encodings[0].scale > 1.5 * from_range
    # with the adjustment, bias scale = input scale x weight scale holds on that channel too
    s_in = r.enc["r1"].encodings[0].scale
    assert r.enc["b2"].encodings[0].max >= 1000.0
    assert r.enc["b2"].encodings[0].scale == pytest.approx(s_in * r.enc["w2"].encodings[0].scale, rel=1e-6)
    # opendlc does this without the option too: HTP adds a bias as int32 at input x weight scale, so
    # a bias scale of its own would be clipped there (and the CPU simulation would disagree with HTP)
    plain = r.rerun(opt(r.prog, "use_per_channel_quantization") + opt(r.prog, "bias_bitwidth", "32"))
    assert plain.encodings["w2"].encodings == r.enc["w2"].encodings
    assert plain.encodings["b2"].encodings == r.enc["b2"].encodings


def check_preserve_named(r):
    assert r.enc.meta["preserve_io_datatype"] == ["x", "y"]


def check_preserve_all(r):
    assert r.enc.meta["preserve_io_datatype"] == []


def check_native_output(r):
    assert r.container.meta["use_native_output_files"] is True


def check_native_input(r):
    uf = r.enc["uf"].encodings[0]  # the Cast's output: the uint8 values themselves
    assert uf.max == pytest.approx(200.0, rel=0.01) and uf.min == 0.0


def check_native_dtype(r):
    check_native_input(r)
    assert "--use_native_dtype is deprecated; use --use_native_input_files" in r.err


def check_no_effect(option: str, words: str):
    def check(r):
        assert f"{option} is deprecated; {words}" in r.err
        base = r.rerun([]).encodings
        assert {n: t.encodings for n, t in base.tensors.items()} == {
            n: t.encodings for n, t in r.enc.tensors.items()
        }

    return check


def check_dump_json(version: str):
    def check(r):
        path = r.output.with_name(f"{r.output.stem}_encoding.json")
        data = json.loads(path.read_text())
        assert data["version"] == version
        back = EncodingSet.from_aimet(data)
        assert set(back.tensors) == set(r.enc.tensors)
        for name, t in r.enc.tensors.items():
            assert [e.scale for e in back[name].encodings] == pytest.approx([e.scale for e in t.encodings])
            assert [e.offset for e in back[name].encodings] == [e.offset for e in t.encodings]

    return check


def check_stripped(r):
    full = r.rerun([])
    assert r.container.overrides is None and full.overrides is not None
    assert r.container.meta == {} and r.enc.meta == {}
    assert r.container.model.doc_string == "" and not r.container.model.graph.value_info
    assert r.output.stat().st_size < full.path.stat().st_size
    assert {n: t.encodings for n, t in full.encodings.tensors.items()} == {
        n: t.encodings for n, t in r.enc.tensors.items()
    }


def check_backend_cpu(r):
    assert r.quantizer()["target_backend"] == "CPU"
    # HTP makes per-channel weights symmetric; the CPU backend keeps the asymmetric schema asked for
    assert any(e.offset != 0 for e in r.enc["w1"].encodings) and len(r.enc["w1"].encodings) == 4
    htp = r.rerun(opt(r.prog, "use_per_channel_quantization")).encodings["w1"]
    assert all(e.offset == 0 and e.is_symmetric for e in htp.encodings)


def check_soc(r):
    assert r.quantizer()["target_soc_model"] == "sm8650" and r.quantizer()["target_backend"] == "HTP"


def check_extra_outputs(r):
    outs = [o.name for o in r.container.model.graph.output]
    assert "c" in outs and "y" in outs
    z = np.concatenate([a.ravel() for a in r.case.data["z"]])
    e = r.enc["z"].encodings[0]  # name:=path pairs in another order than the inputs
    assert (
        e.min <= z.min() + e.scale
        and e.max >= z.max() - e.scale
        and e.max - e.min < z.max() - z.min() + 2 * e.scale
    )


def check_encoding_optimizations(r):
    check_no_effect("--use_encoding_optimizations", "the target backend's encoding constraints")(r)


def _with(name: str, value: str) -> Callable[[str], list[str]]:
    return lambda p: opt(p, name, value)


# (id, commands, case, options per command, check, needs an input list)
Row = tuple[str, tuple[str, ...], str, Callable[[str], list[str]], Callable[[Run], None], bool]
ROWS: list[Row] = [
    ("defaults", ALL, "conv", lambda p: [], check_defaults, True),
    ("act_bitwidth-16", ALL, "conv", lambda p: opt(p, "act_bitwidth", "16"), check_act16, True),
    ("weights_bitwidth-16", ALL, "conv", lambda p: opt(p, "weights_bitwidth", "16"), check_w16, True),
    ("weights_bitwidth-4", ALL, "conv", lambda p: opt(p, "weights_bitwidth", "4"), check_w4, True),
    ("bias_bitwidth-32", ALL, "conv", lambda p: opt(p, "bias_bitwidth", "32"), check_bias32, True),
    ("bitwidth-16", SNPE, "conv", lambda p: opt(p, "bitwidth", "16"), check_bitwidth16, True),
    ("per-channel", ALL, "conv", lambda p: opt(p, "use_per_channel_quantization"), check_per_channel, True),
    ("axis_quant", SNPE, "conv", lambda p: opt(p, "axis_quant"), check_axis_quant, True),
    ("per-row", ALL, "conv", lambda p: opt(p, "use_per_row_quantization"), check_per_row, True),
    (
        "per-row-bias",
        ALL,
        "conv",
        lambda p: opt(p, "use_per_row_quantization") + opt(p, "enable_per_row_quantized_bias"),
        check_per_row_bias,
        True,
    ),
    (
        "restrict-steps",
        SNPE,
        "conv",
        lambda p: (
            opt(p, "param_quantizer", "symmetric") + opt(p, "restrict_quantization_steps", "-0x40,0x3F")
        ),
        check_restrict_steps,
        True,
    ),
    (
        "restrict-steps",
        QAIRT,
        "conv",
        lambda p: (
            opt(p, "param_quantizer_schema", "symmetric")
            + opt(p, "restrict_quantization_steps", "-0x40 0x3F")
        ),
        check_restrict_steps,
        True,
    ),
    (
        "restrict-steps-16",  # the SDK's own 16-bit example
        SNPE,
        "conv",
        lambda p: (
            ["--weights_bitwidth", "16", "--param_quantizer", "symmetric"]
            + ["--restrict_quantization_steps", "-0x8000,0x7F7F"]
        ),
        check_restrict_steps_16,
        True,
    ),
    (
        "restrict-steps-16",
        QAIRT,
        "conv",
        lambda p: (
            ["--weights_bitwidth", "16", "--param_quantizer_schema", "symmetric"]
            + ["--restrict_quantization_steps", "-0x8000 0x7F7F"]
        ),
        check_restrict_steps_16,
        True,
    ),
    (
        "param_quantizer-symmetric",
        SNPE,
        "conv",
        lambda p: opt(p, "param_quantizer", "symmetric"),
        check_param_symmetric,
        True,
    ),
    (
        "param_quantizer-tf",
        SNPE,
        "conv",
        lambda p: opt(p, "param_quantizer", "tf") + opt(p, "act_quantizer", "tf"),
        check_defaults,
        True,
    ),
    (
        "act_quantizer-symmetric",
        SNPE,
        "conv",
        lambda p: opt(p, "act_quantizer", "symmetric"),
        check_act_symmetric,
        True,
    ),
    (
        "use_symmetric_quantize_weights",
        SNPE,
        "conv",
        lambda p: opt(p, "use_symmetric_quantize_weights"),
        check_symmetric_weights_deprecated,
        True,
    ),
    (
        "param-schema-symmetric",
        QAIRT,
        "conv",
        lambda p: opt(p, "param_quantizer_schema", "symmetric"),
        check_param_symmetric,
        True,
    ),
    (
        "act-schema-symmetric",
        QAIRT,
        "conv",
        lambda p: opt(p, "act_quantizer_schema", "symmetric"),
        check_act_symmetric,
        True,
    ),
    (
        "act-schema-unsignedsymmetric",
        QAIRT,
        "conv",
        lambda p: opt(p, "act_quantizer_schema", "unsignedsymmetric"),
        check_act_unsignedsymmetric,
        True,
    ),
    (
        "param-schema-unsignedsymmetric",
        QAIRT,
        "conv",
        lambda p: opt(p, "param_quantizer_schema", "unsignedsymmetric"),
        check_param_unsignedsymmetric,
        True,
    ),
    (
        "percentile",
        QAIRT,
        "conv",
        lambda p: (
            opt(p, "act_quantizer_calibration", "percentile") + opt(p, "percentile_calibration_value", "90")
        ),
        check_percentile,
        True,
    ),
    *[
        (
            f"act-{m}",
            QAIRT,
            "conv",
            _with("act_quantizer_calibration", m),
            _method_used("act", m),
            True,
        )
        for m in ("min-max", "sqnr", "entropy", "mse", "percentile")
    ],
    *[
        (
            f"param-{m}",
            QAIRT,
            "conv",
            _with("param_quantizer_calibration", m),
            _method_used("param", m),
            True,
        )
        for m in ("min-max", "sqnr", "entropy", "mse", "percentile")
    ],
    (
        "quantizer-enhanced",
        SNPE,
        "conv",
        lambda p: opt(p, "param_quantizer", "enhanced") + opt(p, "act_quantizer", "enhanced"),
        check_enhanced_both,
        True,
    ),
    (
        "use_enhanced_quantizer",
        SNPE,
        "conv",
        lambda p: opt(p, "use_enhanced_quantizer"),
        check_use_enhanced,
        True,
    ),
    (
        "param_quantizer-adjusted",
        SNPE,
        "conv",
        lambda p: opt(p, "param_quantizer", "adjusted"),
        check_adjusted,
        True,
    ),
    (
        "use_adjusted_weights_quantizer",
        SNPE,
        "conv",
        lambda p: opt(p, "use_adjusted_weights_quantizer"),
        check_use_adjusted,
        True,
    ),
    ("algorithms", SNPE, "conv", lambda p: opt(p, "algorithms", "test-tag-model"), check_algorithm, True),
    (
        "optimizations",
        SNPE,
        "conv",
        lambda p: opt(p, "optimizations", "test-tag-model"),
        check_optimizations,
        True,
    ),
    (
        "apply_algorithms",
        QAIRT,
        "conv",
        lambda p: opt(p, "apply_algorithms", "test-tag-model"),
        check_algorithm,
        True,
    ),
    ("snpe-default-ignores-overrides", SNPE, "overrides", lambda p: [], check_overrides_ignored, True),
    ("override_params", SNPE, "overrides", lambda p: opt(p, "override_params"), check_overrides_used, True),
    ("qairt-default-uses-overrides", QAIRT, "overrides", lambda p: [], check_overrides_used, True),
    (
        "ignore_quantization_overrides",
        QAIRT,
        "overrides",
        lambda p: opt(p, "ignore_quantization_overrides"),
        check_overrides_ignored,
        True,
    ),
    (
        "float_fallback",
        SNPE,
        "overrides",
        lambda p: opt(p, "float_fallback") + opt(p, "override_params"),
        check_float_fallback,
        False,
    ),
    (
        "enable_float_fallback",
        ("qairt-quantizer",),
        "overrides",
        lambda p: ["-f"],
        check_float_fallback,
        False,
    ),
    (
        "enable_float_fallback",
        ("opendlc quantize",),
        "overrides",
        lambda p: opt(p, "enable_float_fallback"),
        check_float_fallback,
        False,
    ),
    (
        "float_bitwidth-16",
        SNPE,
        "overrides",
        lambda p: opt(p, "float_fallback") + opt(p, "override_params") + opt(p, "float_bitwidth", "16"),
        check_float_fallback_16,
        False,
    ),
    (
        "float_bitwidth-16",
        QAIRT,
        "overrides",
        lambda p: opt(p, "enable_float_fallback") + opt(p, "float_bitwidth", "16"),
        check_float_fallback_16,
        False,
    ),
    (
        "float_bias_bitwidth-16",
        SNPE,
        "overrides",
        lambda p: opt(p, "float_fallback") + opt(p, "override_params") + opt(p, "float_bias_bitwidth", "16"),
        check_float_bias_16,
        False,
    ),
    (
        "float_bias_bitwidth-16",
        QAIRT,
        "overrides",
        lambda p: opt(p, "enable_float_fallback") + opt(p, "float_bias_bitwidth", "16"),
        check_float_bias_16,
        False,
    ),
    (
        "keep_weights_quantized",
        QAIRT,
        "overrides",
        lambda p: opt(p, "enable_float_fallback") + opt(p, "keep_weights_quantized"),
        check_keep_weights_quantized,
        False,
    ),
    (
        "adjust_bias_encoding",
        QAIRT,
        "conv",
        lambda p: (
            opt(p, "use_per_channel_quantization")
            + opt(p, "bias_bitwidth", "32")
            + opt(p, "adjust_bias_encoding")
        ),
        check_adjust_bias,
        True,
    ),
    (
        "preserve_io_datatype-names",
        QAIRT,
        "conv",
        lambda p: ["--preserve_io_datatype", "x", "y"],
        check_preserve_named,
        True,
    ),
    (
        "preserve_io_datatype-all",
        QAIRT,
        "conv",
        lambda p: ["--preserve_io_datatype"],
        check_preserve_all,
        True,
    ),
    (
        "use_native_input_files",
        ALL,
        "u8",
        lambda p: opt(p, "use_native_input_files"),
        check_native_input,
        True,
    ),
    ("use_native_dtype", SNPE, "u8", lambda p: opt(p, "use_native_dtype"), check_native_dtype, True),
    (
        "use_native_output_files",
        ALL,
        "conv",
        lambda p: opt(p, "use_native_output_files"),
        check_native_output,
        True,
    ),
    (
        "no_weight_quantization",
        SNPE,
        "conv",
        lambda p: opt(p, "no_weight_quantization"),
        check_no_effect("--no_weight_quantization", "it no longer has an effect"),
        True,
    ),
    (
        "use_encoding_optimizations",
        SNPE,
        "conv",
        lambda p: opt(p, "use_encoding_optimizations"),
        check_encoding_optimizations,
        True,
    ),
    (
        "dump_encoding_json",
        QAIRT,
        "conv",
        lambda p: opt(p, "dump_encoding_json"),
        check_dump_json("0.6.1"),
        True,
    ),
    (
        "dump_encoding_json-1.0.0",
        ("opendlc quantize",),
        "conv",
        lambda p: [
            "--dump_encoding_json",
            "--dump_encoding_json_version",
            "1.0.0",
            "--use_per_channel_quantization",
        ],
        check_dump_json("1.0.0"),
        True,
    ),
    (
        "dump_encoding_json-0.6.1-per-channel",
        ("opendlc quantize",),
        "conv",
        lambda p: [
            "--dump_encoding_json",
            "--dump_encoding_json_version=0.6.1",
            "--use_per_channel_quantization",
        ],
        check_dump_json("0.6.1"),
        True,
    ),
    (
        "export_stripped_dlc",
        QAIRT,
        "overrides",
        lambda p: opt(p, "export_stripped_dlc"),
        check_stripped,
        True,
    ),
    (
        "target_backend-cpu",
        QAIRT,
        "conv",
        lambda p: opt(p, "target_backend", "CPU") + opt(p, "use_per_channel_quantization"),
        check_backend_cpu,
        True,
    ),
    (
        "target_soc_model",
        QAIRT,
        "conv",
        lambda p: opt(p, "target_backend", "HTP") + opt(p, "target_soc_model", "SM8650"),
        check_soc,
        True,
    ),
    ("input-list-pairs-and-outputs", ALL, "two", lambda p: [], check_extra_outputs, True),
]


@pytest.mark.parametrize(
    "row_id,prog,case,args,check,with_list",
    [pytest.param(r[0], p, r[2], r[3], r[4], r[5], id=f"{r[0]}[{p}]") for r in ROWS for p in r[1]],
)
def test_option_effect(row_id, prog, case, args, check, with_list, cases, tmp_path, capsys):
    run = _run_ok(prog, cases[case], args(prog), tmp_path, capsys, with_list=with_list)
    check(run)


# The options each command documents (../shared/reference/qairt-snpe-tools.txt), logging options aside.
_SNPE_COMMON = """
act_bitwidth act_quantizer algorithms axis_quant bias_bitwidth bitwidth
enable_per_row_quantized_bias float_bias_bitwidth float_bitwidth float_fallback input_dlc
input_list no_weight_quantization optimizations output_dlc override_params param_quantizer
restrict_quantization_steps udo_package_path use_adjusted_weights_quantizer
use_encoding_optimizations use_enhanced_quantizer use_native_dtype use_native_input_files
use_native_output_files use_per_channel_quantization use_per_row_quantization
use_symmetric_quantize_weights version weights_bitwidth help h
"""
_QAIRT = """
input_dlc i output_dlc o input_list l enable_float_fallback f apply_algorithms bias_bitwidth
act_bitwidth weights_bitwidth float_bitwidth float_bias_bitwidth ignore_quantization_overrides
use_per_channel_quantization use_per_row_quantization enable_per_row_quantized_bias
preserve_io_datatype use_native_input_files use_native_output_files restrict_quantization_steps
keep_weights_quantized adjust_bias_encoding act_quantizer_calibration
param_quantizer_calibration act_quantizer_schema param_quantizer_schema
percentile_calibration_value use_aimet_quantizer op_package_lib opl dump_encoding_json config c
export_stripped_dlc help h target_backend target_soc_model
"""
DOCUMENTED = {
    "snpe-dlc-quant": set(_SNPE_COMMON.split()),
    "snpe-dlc-quantize": set(_SNPE_COMMON.split())
    | {"enable_htp", "htp_socs", "overwrite_cache_records", "use_float_io"},
    "qairt-quantizer": set(_QAIRT.split()),
    "opendlc quantize": set(_QAIRT.split()) | {"dump_encoding_json_version", "report"},
}
# options whose effect is checked in test_sdk_quant_more.py rather than in the table
ELSEWHERE = {
    "input_dlc",
    "i",
    "input_list",
    "l",
    "output_dlc",
    "o",
    "udo_package_path",
    "op_package_lib",
    "opl",
    "config",
    "c",
    "use_aimet_quantizer",
    "report",  # tests/test_analysis.py
    "enable_htp",
    "htp_socs",
    "overwrite_cache_records",
    "use_float_io",
    "version",
    "help",
    "h",
    "f",
}


@pytest.mark.parametrize("dialect", list(DOCUMENTED))
def test_each_command_takes_exactly_its_documented_options(dialect):
    from opendlc.cli.quant_options import build_parser

    ours = {s.lstrip("-") for a in build_parser(dialect)._actions for s in a.option_strings}
    assert ours == DOCUMENTED[dialect]


@pytest.mark.parametrize("dialect", list(DOCUMENTED))
def test_every_option_has_a_row_or_a_test(dialect):
    spelled = {tok.split("=")[0].lstrip("-") for r in ROWS if dialect in r[1] for tok in r[3](dialect)}
    missing = DOCUMENTED[dialect] - spelled - ELSEWHERE
    assert not missing
