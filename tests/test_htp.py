"""HTP offline preparation, the emulator, net-run and export (onnxruntime-qnn's HTP backend, for real).

Small models quantized by opendlc keep every compile and emulator run around a second.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import realmodels
import tinymodels
from onnx import TensorProto, helper, numpy_helper

from opendlc import container as dlc
from opendlc.cli.sdk_prepare import main as prepare_main
from opendlc.errors import NotAvailableError, UsageError
from opendlc.htp import HtpPrepareOptions, find_record, prepare_container, prepare_records, run_record
from opendlc.htp.export import export
from opendlc.htp.qnn import ep_devices, parse_rejected_nodes
from opendlc.netrun import file_names, net_run
from opendlc.quant.api import quantize
from opendlc.quant.export import to_qdq_model
from opendlc.quant.options import QuantizerOptions

PROG = "snpe-dlc-graph-prepare"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_cli(capsys, *args: str) -> tuple[int, str, str]:
    status = prepare_main(PROG, [str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("htp")


@pytest.fixture(scope="module")
def quantized(work) -> Path:
    """conv_net quantized by opendlc (W8A8 min-max), as a container file."""
    c = quantize(
        dlc.Container(model=tinymodels.conv_net()), tinymodels.samples(16), QuantizerOptions(), progress=False
    )
    path = work / "q.dlc"
    c.write(path)
    return path


@pytest.fixture(scope="module")
def float_dlc(work) -> Path:
    path = work / "float.dlc"
    dlc.Container(model=tinymodels.conv_net()).write(path)
    return path


@pytest.fixture(scope="module")
def socs_cached(work, quantized) -> Path:
    out = work / "socs.dlc"
    assert prepare_main(PROG, ["--input_dlc", str(quantized), "--output_dlc", str(out),
                               "--htp_socs", "sm8350,sm8550,sm8650,sm8750"]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def inputs(work) -> Path:
    """An input list of three float32 samples of conv_net."""
    folder = work / "inputs"
    folder.mkdir()
    lines = []
    for i, s in enumerate(tinymodels.samples(3, seed=11)):
        s["x"].tofile(folder / f"x{i}.raw")
        lines.append(f"inputs/x{i}.raw")
    lst = work / "inputs.txt"
    lst.write_text("\n".join(lines) + "\n")
    return lst


# ---- caches per SoC and architecture ----------------------------------------------------------------
def test_caches_for_four_socs_are_generated_described_and_differ(socs_cached):
    c = dlc.load(socs_cached)
    assert c.quantized
    by_id = {r.id: r for r in c.records}
    expected = {
        "sm8350": (30, "v68", 4),
        "sm8550": (43, "v73", 8),
        "sm8650": (57, "v75", 8),
        "sm8750": (69, "v79", 8),
    }
    assert set(by_id) == {f"htp-{s}" for s in expected}
    for soc, (soc_model, arch, vtcm) in expected.items():
        info = by_id[f"htp-{soc}"].info
        assert (info["soc"], info["soc_model"], info["arch"], info["vtcm_mb"]) == (soc, soc_model, arch, vtcm)
        assert info["optimization_level"] == 2
        assert info["sha256"] == hashlib.sha256(by_id[f"htp-{soc}"].data).hexdigest()
        assert info["library"]["qnn_build"].startswith("v2.")
        # what Qualcomm's compiler wrote into the binary: the SoC, its architecture and VTCM
        built = info["compiled_for"]
        assert built["soc"] == soc.upper() and built["dsp_arch"] == int(arch[1:])
        assert built["vtcm_bytes"] == vtcm << 20 and built["optimization_level"] == 2
        assert info["inputs"] == [
            {
                **info["inputs"][0],
                "name": "x",
                "shape": [1, 3, 8, 8],
                "dtype": "uint8",
                "buffer_type": "fixedPoint8",
            }
        ]
        assert info["outputs"][0]["name"] == "y" and info["outputs"][0]["buffer_type"] == "fixedPoint8"
        assert info["options"]["optimization_level"] == 2
        assert info["unquantized_ops"] == []  # every op in a quantized group (see lower_for_htp)
    blobs = [r.data for r in c.records]
    assert all(a != b for a, b in itertools.combinations(blobs, 2))


def test_caches_for_architectures(work, quantized, capsys):
    out = work / "archs.dlc"
    status, stdout, _ = prepare_cli(
        capsys, "--input_dlc", quantized, "--output_dlc", out, "--htp_archs", "v68,v73"
    )
    assert status == 0 and "htp-v68" in stdout
    c = dlc.load(out)
    assert [r.id for r in c.records] == ["htp-v68", "htp-v73"]
    for r, arch in zip(c.records, (68, 73), strict=True):
        assert r.info["soc"] is None and r.info["arch"] == f"v{arch}"
        assert r.info["compiled_for"]["dsp_arch"] == arch
        assert "htp_arch" in r.info["provider_options"] and "soc_model" not in r.info["provider_options"]
    assert c.records[0].data != c.records[1].data


def test_documented_qcs_socs_compile_for_what_the_library_calls_them(work, quantized, capsys):
    out = work / "qcs.dlc"
    status, _, err = prepare_cli(
        capsys, "--input_dlc", quantized, "--output_dlc", out, "--htp_socs=qcs6490,qcs8550"
    )
    assert status == 0, err
    built = {r.id: r.info["compiled_for"] for r in dlc.load(out).records}
    assert built["htp-qcs6490"]["soc"] == "QCS6490" and built["htp-qcs6490"]["dsp_arch"] == 68
    assert built["htp-qcs8550"]["soc"] == "QCS8550" and built["htp-qcs8550"]["dsp_arch"] == 73


def test_second_run_skips_and_overwrite_regenerates(work, socs_cached, capsys):
    again = work / "again.dlc"
    status, stdout, _ = prepare_cli(
        capsys, "--input_dlc", socs_cached, "--output_dlc", again, "--htp_socs", "sm8550,sm8650"
    )
    assert status == 0 and stdout.count("skipped") == 2 and "prepared" not in stdout
    before = {r.id: r for r in dlc.load(socs_cached).records}
    after = {r.id: r for r in dlc.load(again).records}
    assert set(after) == set(before) and all(after[k].data == before[k].data for k in before)

    c = dlc.load(socs_cached)
    report = prepare_records(c, socs="sm8650", overwrite=True, options=HtpPrepareOptions(progress=False))
    assert [(r.record_id, r.status) for r in report.results] == [("htp-sm8650", "replaced")]
    assert report.results[0].record.info["created"] and report.results[0].seconds > 0
    assert [r.id for r in report.container.records] == [r.id for r in c.records]  # replaced in place


def test_other_settings_replace_the_record_of_that_target(socs_cached):
    c = dlc.load(socs_cached)
    report = prepare_records(
        c, socs="sm8650", options=HtpPrepareOptions(optimization_level=3, progress=False)
    )
    assert report.results[0].status == "replaced"
    info = report.results[0].record.info
    assert info["optimization_level"] == 3 and info["compiled_for"]["optimization_level"] == 3


def test_vtcm_override(quantized):
    c = dlc.load(quantized)
    small = prepare_container(c, socs="sm8650", vtcm_override=2, progress=False).records[0]
    assert small.info["vtcm_mb"] == 2 and small.info["compiled_for"]["vtcm_bytes"] == 2 << 20
    full = prepare_container(c, socs="sm8350", vtcm_override=0, progress=False).records[0]
    assert full.info["vtcm_mb"] == 4 and full.info["compiled_for"]["vtcm_bytes"] == 4 << 20


def test_options_not_applied_are_recorded_with_a_warning(work, quantized, capsys):
    out = work / "hints.dlc"
    status, _, err = prepare_cli(
        capsys, "--input_dlc", quantized, "--output_dlc", out, "--htp_dlbc=true", "--num_hvx_threads", "2",
        "--memorymapped_buffer_hint=true", "--optimization_level", "3", "--optimization_preset=1",
    )  # fmt: skip
    assert status == 0
    for name in ("htp_dlbc", "num_hvx_threads", "memorymapped_buffer_hint", "optimization_preset"):
        assert f"--{name}" in err and "not applied" in err
    info = dlc.load(out).records[0].info
    assert set(info["not_applied"]) == {
        "htp_dlbc",
        "num_hvx_threads",
        "memorymapped_buffer_hint",
        "optimization_preset",
    }
    assert info["options"]["htp_dlbc"] is True and info["options"]["num_hvx_threads"] == 2


# ---- bad input: one line, non-zero, input untouched, no output ---------------------------------------
@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--htp_socs", "sm9999"], 2, "unknown SoC 'sm9999' (known: sm8350,"),
        (["--htp_archs", "v99"], 2, "unknown HTP architecture 'v99' (known: v68,"),
        (["--htp_socs", "sm8350", "--vtcm_override", "8"], 2, "more than sm8350's VTCM (4 MB)"),
        (["--htp_socs", "sm8350", "--htp_archs", "v68"], 2, "mutually exclusive"),
        (
            ["--htp_archs", "v68", "--vtcm_override", "2"],
            2,
            "--vtcm_override cannot be used with --htp_archs",
        ),
        (["--optimization_level", "4"], 2, "choose 1, 2 or 3"),
        (["--optimization_preset", "1"], 2, "with --optimization_level 3"),
        (["--buffer_data_type", "nope=float32"], 2, "not an input or output of the graph"),
        (["--buffer_data_type", "x=fixedPoint4"], 2, "unknown type 'fixedPoint4'"),
        (["--set_output_tensors", "nope"], 2, "no tensor 'nope'"),
        (["--input_name", "x"], 2, "give them in pairs"),
        (["--htp_dlbc", "maybe"], 2, "expected true or false"),
        (["--num_hvx_threads", "0"], 2, "greater than 0"),
        (["--udo_package_path", "/no/such/package"], 2, "no such UDO package"),
    ],
)
def test_bad_options(work, quantized, capsys, args, status, message):
    before = sha(quantized)
    out = work / "never.dlc"
    got, stdout, err = prepare_cli(capsys, "--input_dlc", quantized, "--output_dlc", out, *args)
    assert got == status
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and sha(quantized) == before


def test_unquantized_container_and_missing_input(work, float_dlc, capsys):
    before = sha(float_dlc)
    status, _, err = prepare_cli(capsys, "--input_dlc", float_dlc)
    assert status == 2 and "not quantized" in err and len(err.strip().splitlines()) == 1
    assert sha(float_dlc) == before and not (work / "float_cached.dlc").exists()
    status, _, err = prepare_cli(capsys, "--input_dlc", work / "missing.dlc")
    assert status == 2 and "no such file" in err


def test_rejected_nodes_are_listed(work, capsys):
    """A node HTP does not take fails the preparation (never a silent CPU fallback)."""
    s, z = (
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "z"),
    )
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("Det", ["xd"], ["y"], name="the_det"),
    ]
    g = helper.make_graph(
        nodes, "rej", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [s, z],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = work / "rej.onnx"
    onnx.save(m, path)
    status, _, err = prepare_cli(capsys, "--input_dlc", path)
    last = err.strip().splitlines()[-1]  # after the progress lines
    assert status == 1 and last.startswith(
        f"{PROG}: error: HTP preparation for sm8650 (v75) does not take 1 node"
    )
    assert (
        "the_det (Det): Operators of type `Det` are not supported" in last
        and "CPU fallback is disabled" in last
    )
    assert not (work / "rej_cached.dlc").exists()


def test_parse_rejected_nodes_names_the_compute_node():
    log = (
        "[V:onnxruntime:, x.cc:1 LogNodeSupport] Validation FAILED for 3 nodes in NodeUnit (Softmax) :\n"
        "\tOperator type: DequantizeLinear Node name: dq Node index: 1\n"
        "\tOperator type: Softmax Node name: sm Node index: 2\n"
        "\tOperator type: QuantizeLinear Node name: q Node index: 3\n"
        "\tREASON : Unsupported axis.Softmax node `sm` will not be assigned to QNN EP.\n"
    )
    (node,) = parse_rejected_nodes(log)
    assert (node.name, node.op_type, node.reason) == ("sm", "Softmax", "Unsupported axis")


def test_missing_htp_libraries_say_how_to_get_them(work, quantized, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime_qnn", None)  # import fails as where it is not installed
    out = work / "nolib.dlc"
    status, _, err = prepare_cli(capsys, "--input_dlc", quantized, "--output_dlc", out)
    assert status == 1 and "pip install onnxruntime-qnn" in err and not out.exists()
    with pytest.raises(NotAvailableError, match="Linux x86-64 and Windows only"):
        from opendlc.htp.qnn import htp_backend_path

        htp_backend_path()


# ---- lowering for the QNN EP -----------------------------------------------------------------------
def _lowering_model() -> onnx.ModelProto:
    """x -> Conv (uint8 bias) -> Relu (fused: no encoding before it) -> nearest Resize whose output
    encoding differs from its input's -> y; QDQ by hand, as opendlc's export writes it."""
    rng = np.random.default_rng(3)

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [
        const("sx", np.float32(0.02)), const("zx", np.uint8(128)),
        const("wq", rng.integers(0, 255, (4, 3, 3, 3)).astype(np.uint8)), const("sw", np.float32(0.004)),
        const("zw", np.uint8(120)), const("bq", rng.integers(0, 255, 4).astype(np.uint8)),
        const("sb", np.float32(0.01)), const("zb", np.uint8(100)),
        const("sr", np.float32(0.015)), const("zr", np.uint8(0)),
        const("so", np.float32(0.02)), const("zo", np.uint8(0)),
        const("roi", np.zeros(0, np.float32)), const("scales", np.array([1, 1, 2, 2], np.float32)),
    ]  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["w"]),
        helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["b"]),
        helper.make_node("Conv", ["xd", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "sr", "zr"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "sr", "zr"], ["rd"]),
        helper.make_node("Resize", ["rd", "roi", "scales"], ["up"], mode="nearest", name="resize"),
        helper.make_node("QuantizeLinear", ["up", "so", "zo"], ["uq"]),
        helper.make_node("DequantizeLinear", ["uq", "so", "zo"], ["y"]),
    ]
    g = helper.make_graph(
        nodes, "lowering", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits,
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def test_lowering_keeps_the_arithmetic_and_puts_every_op_in_a_quantized_group(work):
    from opendlc.htp.qdq import lower_for_htp

    model = _lowering_model()
    lowered, notes = lower_for_htp(model)
    assert len(notes) == 3  # fused Relu, int32 bias, data movement
    x = {"x": np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)}
    cpu = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for m in (model, lowered)
    ]
    y0, y1 = (s.run(None, x)[0] for s in cpu)
    np.testing.assert_allclose(y1, y0, atol=0.02 * 0.51)  # the int32 bias may move a value by half a step

    path = work / "lowering.onnx"
    onnx.save(model, path)
    record = prepare_container(dlc.load(path), progress=False).records[0]
    assert record.info["unquantized_ops"] == []
    y_htp = run_record(dlc.Container(model=model, records=[record])).run(x)["y"]
    assert realmodels.sqnr_db(y0, y_htp) > 30


@pytest.mark.parametrize("bias_bitwidth", [8, 32])
def test_a_channel_of_zero_weights_keeps_its_bias_on_htp(bias_bitwidth):
    # per-channel weight scales make such a channel's scale tiny; HTP adds the bias as int32 at input x
    # weight scale, so before the quantizer widened that scale HTP output 0 there and the CPU QDQ
    # simulation (which honoured the bias's own scale) output the bias: 12 steps apart
    opts = QuantizerOptions(use_per_channel_quantization=True, bias_bitwidth=bias_bitwidth)
    q = quantize(
        dlc.Container(model=tinymodels.dead_channel_conv()), tinymodels.samples(8), opts, progress=False
    )
    x = tinymodels.samples(1, seed=9)[0]
    y_htp = run_record(prepare_container(q, socs="sm8650", progress=False), "sm8650").run(x)["y"]
    y_cpu = ort.InferenceSession(to_qdq_model(q).SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, x
    )[0]
    step = q.encodings["y"].encodings[0].scale
    assert np.abs(y_htp - y_cpu).max() <= 1.01 * step
    assert np.abs(y_htp[0, 0] - 0.5).max() <= step


def test_a_weight_far_from_its_zero_point_is_computed_as_htp_holds_it():
    # HTP computes with int8 (q - zero point); a channel beyond that is requantized there, and the CPU
    # simulation now holds the weight the same way (before: 4 output steps apart on that channel)
    model = tinymodels.skewed_weight_conv()
    q = quantize(dlc.Container(model=model), tinymodels.samples(8, shape=(1, 256, 6, 6)), QuantizerOptions(),
                 progress=False)  # fmt: skip
    w = q.encodings["w"].encodings[0]
    assert len(q.encodings["w"].encodings) == 1 and w.offset > -40  # per tensor, zero point near 20
    qdq = to_qdq_model(q)
    held = next(i for i in qdq.graph.initializer if i.name == "w__quantized")
    assert held.data_type == TensorProto.INT8  # per channel int8, as HTP holds it
    xs = tinymodels.samples(3, seed=21, shape=(1, 256, 6, 6))
    runner = run_record(prepare_container(q, socs="sm8650", progress=False), "sm8650")
    cpu = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    step = q.encodings["y"].encodings[0].scale
    for x in xs:
        assert np.abs(runner.run(x)["y"] - cpu.run(None, x)[0]).max() <= 1.01 * step
    # the float model and the simulation still agree as a quantized model should
    fp = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert realmodels.sqnr_db(fp.run(None, xs[0])[0], cpu.run(None, xs[0])[0]) > 25


def test_16bit_activations_agree_where_htp_has_limits():
    # two HTP limits at 16 bits, found on PP-OCR rec W8A16: a requantization multiplier below 2^-24 (a
    # channel of weights about zero) gives the lowest integer, and HardSigmoid writes its output on the
    # [0, 1) grid whatever encoding it was given; the HTP backend's constraints now respect both
    model = tinymodels.dead_channel_conv(0.0, dead=1e-6)  # multiplier about 2e-8 on channel 0
    model.graph.node.append(helper.make_node("HardSigmoid", ["y"], ["z"], alpha=1 / 6, beta=0.5))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8]))
    q = quantize(dlc.Container(model=model), tinymodels.samples(8), QuantizerOptions(
        act_bitwidth=16, use_per_channel_quantization=True, bias_bitwidth=32), progress=False)  # fmt: skip
    z_enc = q.encodings["z"].encodings[0]
    assert (z_enc.scale, z_enc.offset) == (2.0**-16, 0)
    x = tinymodels.samples(1, seed=9)[0]
    htp = run_record(prepare_container(q, socs="sm8650", progress=False), "sm8650").run(x)
    cpu = ort.InferenceSession(to_qdq_model(q).SerializeToString(), providers=["CPUExecutionProvider"])
    # in 16-bit steps; HTP's HardSigmoid itself is a few 16-bit steps off (before: thousands, both)
    for name, value, steps in zip(("y", "z"), cpu.run(["y", "z"], x), (2, 8), strict=True):
        assert np.abs(htp[name] - value).max() <= (steps + 0.01) * q.encodings[name].encodings[0].scale, name


def test_a_matmul_of_two_16bit_activations_is_simulated_as_htp_computes_it():
    # HTP multiplies two activations as 16 x 8 bits (the second converted to 8 bits over its range); the
    # CPU simulation quantizes it the same way (before: 40 16-bit output steps apart on average)
    g = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Transpose", ["x"], ["b"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["a", "b"], ["y"]),
        ],
        "attention_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    q = quantize(dlc.Container(model=model), tinymodels.samples(8, shape=(1, 16, 32)),
                 QuantizerOptions(act_bitwidth=16), progress=False)  # fmt: skip
    qdq = to_qdq_model(q)
    assert any(i.data_type == TensorProto.UINT8 for i in qdq.graph.initializer)  # the 8-bit operand
    runner = run_record(prepare_container(q, socs="sm8650", progress=False), "sm8650")
    cpu = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    step = q.encodings["y"].encodings[0].scale
    for x in tinymodels.samples(2, seed=5, shape=(1, 16, 32)):
        steps = np.abs(runner.run(x)["y"] - cpu.run(None, x)[0]) / step
        # a value HTP rounds to the other 8-bit step moves a few outputs further (about 70 steps)
        assert steps.mean() < 4 and steps.max() < 100


def test_16bit_elementwise_ops_with_constants_stay_quantized():
    # HTP takes a Mul/Add of a 16-bit activation and a constant into a quantized group only when the
    # constant is 16-bit too; with an 8-bit one it ran them in float16 (PP-OCR rec W8A16: 34 nodes)
    scale = numpy_helper.from_array(np.linspace(0.5, 2, 8).astype(np.float32).reshape(1, 8, 1, 1), "c")
    shift = numpy_helper.from_array(np.linspace(-1, 1, 8).astype(np.float32).reshape(1, 8, 1, 1), "d")
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Add", ["m", "d"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])],
        [scale, shift],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    q = quantize(dlc.Container(model=model), tinymodels.samples(4, shape=(1, 8, 4, 4)),
                 QuantizerOptions(act_bitwidth=16), progress=False)  # fmt: skip
    assert q.encodings["c"].encodings[0].bitwidth == 16
    record = prepare_container(q, socs="sm8650", progress=False).records[0]
    assert record.info["unquantized_ops"] == []


# ---- model edits: shapes, outputs, IO buffers --------------------------------------------------------
def _dynamic_qdq_model(path: Path) -> None:
    """A fully convolutional model with dynamic H, W, quantized by ONNX Runtime (QDQ, QUInt8)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.normal(size=(4, 3, 3, 3)) * 0.3).astype(np.float32), "w")
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "fcn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "h", "w"])], [w],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    float_path = path.with_name("fcn_float.onnx")
    onnx.save(m, float_path)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(float_path), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)  # fmt: skip


def test_input_dimensions_reshape_a_dynamic_input(work, capsys):
    model = work / "fcn_qdq.onnx"
    _dynamic_qdq_model(model)
    status, _, err = prepare_cli(capsys, "--input_dlc", model)
    assert status == 2 and "--input_name x --input_dimensions" in err
    out = work / "fcn.dlc"
    status, _, err = prepare_cli(
        capsys, "--input_dlc", model, "--output_dlc", out, "--input_name", "x", "--input_dimensions=1,3,16,12"
    )
    assert status == 0, err
    rec = dlc.load(out).records[0]
    assert rec.info["inputs"][0]["shape"] == [1, 3, 16, 12] and rec.info["outputs"][0]["shape"] == [
        1,
        4,
        16,
        12,
    ]
    assert rec.info["options"]["input_dimensions"] == {"x": [1, 3, 16, 12]}
    status, _, err = prepare_cli(
        capsys, "--input_dlc", model, "--input_name", "other x", "--input_dimensions", "1,3,4,4"
    )
    assert status == 2 and "graph is 'fcn'" in err


def test_buffer_types_and_extra_outputs_run_on_the_emulator(work, quantized, inputs, capsys):
    lst = work / "outputs_list.txt"
    lst.write_text("%r1\n")  # output lines only: the sample lines of graph-prepare's list are ignored
    out = work / "buffers.dlc"
    status, _, err = prepare_cli(
        capsys, "--input_dlc", quantized, "--output_dlc", out, "--buffer_data_type", "x=fixedPoint16",
        "--buffer_data_type=y=float32", "--input_list", lst, "--set_output_tensors", "a",
    )  # fmt: skip
    assert status == 0, err
    info = dlc.load(out).records[0].info
    io = {d["name"]: d for d in info["inputs"] + info["outputs"]}
    assert (io["x"]["dtype"], io["x"]["buffer_type"], io["x"]["bitwidth"]) == ("uint16", "fixedPoint16", 16)
    assert (io["y"]["dtype"], io["y"]["buffer_type"]) == ("float32", "float32")
    assert (io["r1"]["dtype"], io["a"]["dtype"]) == ("uint8", "uint8")
    assert info["options"]["output_tensors"] == ["a", "r1"]

    # the emulator agrees with the CPU simulation on every output, the extra ones included
    htp = net_run(
        out, inputs, work / "buf_htp", runtime="htp", output_tensors=["y", "r1", "a"], progress=False
    )
    cpu = net_run(quantized, inputs, work / "buf_cpu", output_tensors=["y", "r1", "a"], progress=False)
    assert htp.outputs == cpu.outputs == ["y", "r1", "a"]
    for i, t in itertools.product(range(3), ["y", "r1", "a"]):
        h = np.fromfile(work / "buf_htp" / f"Result_{i}" / f"{t}.raw", np.float32)
        c = np.fromfile(work / "buf_cpu" / f"Result_{i}" / f"{t}.raw", np.float32)
        assert h.shape == c.shape and realmodels.sqnr_db(c, h) > 25, (i, t)

    c = dlc.load(out)
    with pytest.raises(UsageError, match="prepare it with --set_output_tensors m"):
        net_run(out, inputs, work / "never", runtime="htp", output_tensors=["m"], progress=False)
    assert find_record(c, soc="sm8650").id == "htp-sm8650"


def test_use_float_io(quantized):
    rec = prepare_container(dlc.load(quantized), use_float_io=True, progress=False).records[0]
    assert [(d["dtype"], d["buffer_type"]) for d in rec.info["inputs"] + rec.info["outputs"]] == [
        ("float32", "float32"),
        ("float32", "float32"),
    ]
    sample = tinymodels.samples(1, seed=3)[0]
    runner = run_record(dlc.Container(model=tinymodels.conv_net(), records=[rec]), "sm8650")
    y = runner.run(sample)["y"]
    cpu = ort.InferenceSession(
        to_qdq_model(dlc.load(quantized)).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    assert realmodels.sqnr_db(cpu.run(None, sample)[0], y) > 25


# ---- net-run ---------------------------------------------------------------------------------------
def test_net_run_htp_agrees_with_the_cpu_simulation(work, socs_cached, quantized, float_dlc, inputs):
    htp = net_run(socs_cached, inputs, work / "out_htp", runtime="htp", soc="sm8550", progress=False)
    assert htp.record == "htp-sm8550" and htp.samples == 3
    assert net_run(socs_cached, inputs, work / "out_cpu", progress=False).runtime == "cpu"
    assert net_run(float_dlc, inputs, work / "out_fp", progress=False).outputs == ["y"]
    for i in range(3):
        h, c, f = (
            np.fromfile(work / d / f"Result_{i}" / "y.raw", np.float32)
            for d in ("out_htp", "out_cpu", "out_fp")
        )
        assert h.size == c.size == f.size == 256
        assert realmodels.sqnr_db(c, h) > 30  # same quantized model, two implementations
        assert realmodels.sqnr_db(f, c) > 15 and not np.array_equal(f, c)  # quantized, not float


def test_net_run_native_files(work, socs_cached, inputs):
    info = find_record(dlc.load(socs_cached), soc="sm8650").info
    out_buf, in_buf = info["outputs"][0], info["inputs"][0]
    native = net_run(socs_cached, inputs, work / "native", runtime="htp", native_outputs=True, progress=False)
    floats = net_run(socs_cached, inputs, work / "floats", runtime="htp", progress=False)
    assert native.outputs == floats.outputs == ["y"]
    q = np.fromfile(work / "native" / "Result_0" / "y.raw", np.uint8)  # the fixedPoint8 buffer's integers
    y = np.fromfile(work / "floats" / "Result_0" / "y.raw", np.float32)
    assert q.size == y.size == 256
    np.testing.assert_allclose(y, out_buf["scale"] * (q.astype(np.float64) + out_buf["offset"]), rtol=1e-6)

    # native input files: the integers the float input quantizes to give the same result
    x = np.fromfile(inputs.parent / "inputs" / "x0.raw", np.float32)
    (work / "q0.raw").write_bytes(
        np.clip(np.rint(x / in_buf["scale"]) - in_buf["offset"], 0, 255).astype(np.uint8).tobytes()
    )
    (work / "native.txt").write_text("q0.raw\n")
    net_run(
        socs_cached,
        work / "native.txt",
        work / "native_in",
        runtime="htp",
        native_inputs=True,
        progress=False,
    )
    np.testing.assert_array_equal(np.fromfile(work / "native_in" / "Result_0" / "y.raw", np.float32), y)


def test_net_run_errors(work, quantized, socs_cached, inputs):
    with pytest.raises(UsageError, match=r"no HTP cache record for sm8650 .*records: none.*graph-prepare"):
        net_run(quantized, inputs, work / "x", runtime="htp", progress=False)
    with pytest.raises(UsageError, match="records: htp-sm8350"):
        net_run(socs_cached, inputs, work / "x", runtime="htp", soc="sm8450", progress=False)
    with pytest.raises(UsageError, match="--soc applies to --runtime htp"):
        net_run(socs_cached, inputs, work / "x", soc="sm8650", progress=False)
    with pytest.raises(UsageError, match="--runtime gpu"):
        net_run(socs_cached, inputs, work / "x", runtime="gpu", progress=False)


def test_file_safe_output_names():
    names = file_names(["a/b:0", "a_b_0", "conv", "x\\y", ".."])
    assert names == {
        "a/b:0": "a_b_0.raw",
        "a_b_0": "a_b_0_2.raw",
        "conv": "conv.raw",
        "x\\y": "x_y.raw",
        "..": "_.raw",
    }


# ---- export ----------------------------------------------------------------------------------------
def test_export_formats_load(work, socs_cached, quantized):
    c = dlc.load(socs_cached)
    sample = tinymodels.samples(1, seed=5)[0]
    expected = run_record(c, "sm8650").run(sample)["y"]

    (qdq,) = export(c, "qdq", work / "m_qdq.onnx")
    y_cpu = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).run(None, sample)[0]
    assert realmodels.sqnr_db(y_cpu, expected) > 30

    model, binary = export(c, "ep-context", work / "m_ctx.onnx", soc="sm8650")
    assert binary.name == "m_ctx_qnn.bin" and binary.read_bytes() == find_record(c, soc="sm8650").data
    wrapper = onnx.load(model)
    assert {n.op_type for n in wrapper.graph.node} == {"EPContext", "QuantizeLinear", "DequantizeLinear"}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_provider_for_devices(list(ep_devices()[:1]), {"backend_path": _htp_lib(), "soc_model": "57"})
    y_dev = ort.InferenceSession(str(model), so).run(None, sample)[0]
    np.testing.assert_array_equal(y_dev, expected)

    # no record for sm8450 in the container: prepared on the fly, and the container is not changed
    before = sha(socs_cached)
    _, bin2 = export(c, "ep-context", work / "m8450.onnx", soc="sm8450")
    assert b"soc_type=SM8450" in bin2.read_bytes() and sha(socs_cached) == before

    (ir,) = export(c, "qnn-dlc", work / "m.dlc")
    with zipfile.ZipFile(ir) as z:
        assert {"model", "model.params"} <= set(z.namelist())
    with pytest.raises(Exception, match="QAIRT/SNPE-produced DLC"):
        dlc.load(ir)  # a genuine QAIRT DLC, which opendlc itself does not read


def test_export_errors(work, float_dlc, socs_cached):
    c = dlc.load(float_dlc)
    for fmt in ("qdq", "ep-context"):
        with pytest.raises(UsageError, match="not quantized"):
            export(c, fmt, work / f"never.{fmt}")
        assert not (work / f"never.{fmt}").exists()
    with pytest.raises(UsageError, match="choose one of qdq, ep-context, qnn-dlc"):
        export(dlc.load(socs_cached), "tflite", work / "never.x")
    with pytest.raises(UsageError, match="overwrite the input"):
        export(dlc.load(socs_cached), "qdq", socs_cached)


def test_prepare_container_api(quantized):
    with pytest.raises(UsageError, match="unknown HTP prepare option"):
        prepare_container(dlc.load(quantized), optimisation_level=3)
    c = prepare_container(dlc.load(quantized), socs=["sm8650"], progress=False)
    assert [r.id for r in c.records] == ["htp-sm8650"]
    manifest = json.loads(zipfile.ZipFile(_written(c, quantized.parent / "api.dlc")).read("manifest.json"))
    entry = manifest["records"][0]
    assert entry["member"] == "records/htp-sm8650.bin" and entry["soc_model"] == 57
    assert manifest["members"]["records/htp-sm8650.bin"]["sha256"] == entry["sha256"]


def _written(c: dlc.Container, path: Path) -> Path:
    c.write(path)
    return path


def _htp_lib() -> str:
    import onnxruntime_qnn

    return onnxruntime_qnn.get_qnn_htp_path()


@pytest.mark.real_models
def test_ppocr_cls_quantized_by_opendlc_runs_on_the_emulator(work, ppocr):
    shape = realmodels.input_shape("cls")
    c = dlc.load(ppocr("cls"))
    name = c.model.graph.input[0].name
    from opendlc.model_edit import set_input_shapes

    c.model = set_input_shapes(c.model, {name: list(shape)})
    q = quantize(
        c, [{name: x} for x in realmodels.image_crops(shape, 16, seed=0)], QuantizerOptions(), progress=False
    )
    cached = prepare_container(q, socs="sm8650", progress=False)
    x = realmodels.image_crops(shape, 1, seed=99)[0]
    y_htp = run_record(cached, "sm8650").run({name: x})
    cpu = ort.InferenceSession(to_qdq_model(q).SerializeToString(), providers=["CPUExecutionProvider"])
    fp = ort.InferenceSession(q.model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = cpu.get_outputs()[0].name
    y_cpu, y_fp = cpu.run([out], {name: x})[0], fp.run([out], {name: x})[0]
    assert realmodels.sqnr_db(y_cpu, y_htp[out]) > 10 and realmodels.sqnr_db(y_fp, y_htp[out]) > 10


@pytest.mark.real_models
def test_every_op_of_ppocr_cls_is_within_one_step_on_the_emulator(ppocr):
    # each op fed the emulator's own inputs: what is left between HTP and the CPU simulation is HTP's
    # requantization rounding (one step, on a few percent of the values), nothing of opendlc's
    from opendlc.htp.compare import op_differences
    from opendlc.model_edit import set_input_shapes

    shape = realmodels.input_shape("cls")
    c = dlc.load(ppocr("cls"))
    name = c.model.graph.input[0].name
    c.model = set_input_shapes(c.model, {name: list(shape)})
    crops = [{name: x} for x in realmodels.image_crops(shape, 8, seed=0)]
    q = quantize(c, crops, QuantizerOptions(), progress=False)
    diffs = op_differences(q, {name: realmodels.image_crops(shape, 1, seed=99)[0]})
    assert len(diffs) > 100 and {"Conv", "Add", "HardSwish", "Softmax"} <= {d.ops for d in diffs}
    worst = max(diffs, key=lambda d: d.max_steps)
    assert worst.max_steps <= 1, worst
    assert sum(d.differing for d in diffs) < 0.05 * sum(d.values for d in diffs)
