"""``opendlc convert`` and ``opendlc info``: real PP-OCR models, QDQ models, overrides files."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import realmodels
from clirun import DIGITS, ok, one_line_error, run
from onnx import TensorProto, helper, numpy_helper

from opendlc import container as dlc

PPOCR = {"det": (1, 3, 480, 480), "rec": (1, 3, 48, 320), "cls": (1, 3, 48, 192)}
PPOCR_OUTPUTS = {"det": [1, 1, 480, 480], "rec": [1, 40, 6625], "cls": [1, 2]}


def _info(path) -> dict:
    return json.loads(ok(run("info", path, "--json")).stdout)


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _parameter_tensors(model: onnx.ModelProto) -> list[np.ndarray]:
    """Initializers and Constant values (PP-OCR keeps its weights in Constant nodes)."""
    out = [numpy_helper.to_array(t) for t in model.graph.initializer]
    for n in model.graph.node:
        if n.op_type == "Constant":
            out += [numpy_helper.to_array(a.t) for a in n.attribute if a.name == "value"]
    return out


# ---- the three PP-OCR models -----------------------------------------------------------------------
@pytest.mark.real_models
@pytest.mark.parametrize("name", list(PPOCR))
def test_convert_and_info_on_ppocr(name, ppocr, tmp_path):
    source = ppocr(name)
    shape = PPOCR[name]
    out = tmp_path / f"{name}.dlc"
    ok(run("convert", source, "-o", out, "--input_dim", "x", ",".join(map(str, shape))))

    from_onnx, from_dlc = _info(source), _info(out)
    assert from_dlc["inputs"] == [{"name": "x", "shape": list(shape), "dtype": "float32"}]
    assert [o["shape"] for o in from_dlc["outputs"]] == [PPOCR_OUTPUTS[name]]
    assert any(d is None or isinstance(d, str) for d in from_onnx["inputs"][0]["shape"])  # dynamic before
    # the same graph: op counts, parameters; nothing quantized, nothing prepared
    assert from_dlc["op_counts"] == from_onnx["op_counts"]
    assert from_dlc["op_counts"] == dict(Counter(n.op_type for n in onnx.load(source).graph.node))
    assert from_dlc["parameters"] == from_onnx["parameters"] > 100_000
    tensors = _parameter_tensors(onnx.load(source))
    assert from_dlc["parameters"] == sum(t.size for t in tensors)
    assert from_dlc["parameter_bytes"] == sum(t.nbytes for t in tensors)
    assert (from_dlc["quantized"], from_dlc["encodings"], from_dlc["overrides"], from_dlc["records"]) == (
        False,
        0,
        0,
        [],
    )
    table = ok(run("info", out)).stdout  # the tables a person reads
    for needle in ("Inputs", "Outputs", "Ops", "Summary", "[1, 3, " + str(shape[2]), "Conv"):
        assert needle in table


@pytest.mark.real_models
def test_converted_ppocr_cls_computes_what_the_original_does(ppocr, tmp_path):
    out = tmp_path / "cls.dlc"
    ok(run("convert", ppocr("cls"), "-o", out, "--input_dim", "x 1,3,48,192"))  # one-word form too
    (crop,) = realmodels.image_crops(PPOCR["cls"], 1, seed=3)
    want = _session(str(ppocr("cls"))).run(None, {"x": crop})[0]
    got = _session(dlc.load(out).model).run(None, {"x": crop})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # static shapes: other kernels


@pytest.mark.real_models
def test_input_dim_errors_are_one_line(ppocr, tmp_path):
    out = tmp_path / "cls.dlc"
    one_line_error(run("convert", ppocr("cls"), "-o", out, "--input_dim", "x", "1,3,48"), 2, "rank 4, not 3")
    one_line_error(
        run("convert", ppocr("cls"), "-o", out, "--input_dim", "image", "1,3,48,192"),
        2,
        "no input 'image'",
        "inputs: x",
    )
    one_line_error(run("convert", ppocr("cls"), "-o", out, "--input_dim", "x 1,a,48,192"), 2, "--input_dim")
    assert not out.exists()


# ---- QDQ models: pairs become overrides ------------------------------------------------------------------
def _float_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c2"], ["s2"]),
        helper.make_node("Add", ["s2", "c2"], ["output"]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.2, (4, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b2"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 16, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _samples(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module", params=[False, True], ids=["per-tensor", "per-channel"])
def qdq(request, tmp_path_factory):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter({"input": x} for x in _samples(16, seed=1))

        def get_next(self):
            return next(self.items, None)

    folder = tmp_path_factory.mktemp("qdq")
    float_path, qdq_path = folder / "float.onnx", folder / "qdq.onnx"
    onnx.save(_float_model(), float_path)
    quantize_static(
        str(float_path),
        str(qdq_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=request.param,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    out = folder / "qdq.dlc"
    result = ok(run("convert", qdq_path, "-o", out))
    return float_path, qdq_path, out, result


def _q_dq_encodings(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scale and zero point of every DequantizeLinear, by the tensor it reads."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear":
            out[n.input[0]] = (consts[n.input[1]].ravel(), consts[n.input[2]].ravel().astype(np.int64))
    return out


def test_qdq_pairs_become_overrides_and_leave_the_graph(qdq):
    float_path, qdq_path, out, result = qdq
    source = onnx.load(qdq_path)
    c = dlc.load(out)
    ops = Counter(n.op_type for n in c.model.graph.node)
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    assert ops["Conv"] == 2 and ops["Relu"] == 1 and ops["Sigmoid"] == 1 and ops["Add"] == 1
    assert c.overrides is not None and not c.quantized
    assert (
        f"imported {len(c.overrides)} encodings from QuantizeLinear/DequantizeLinear pairs" in result.stderr
    )

    # every pair's scale and zero point is an override, in QNN's convention (offset = -zero point)
    producer = {o: n for n in source.graph.node for o in n.output}
    pairs = _q_dq_encodings(source)
    assert len(pairs) == len(c.overrides)
    for read, (scale, zero_point) in pairs.items():
        q = producer.get(read)
        kind = "activation" if q is not None and q.op_type == "QuantizeLinear" else "param"
        candidates = [t for t in c.overrides.tensors.values() if t.kind == kind]
        matches = [
            t
            for t in candidates
            if len(t.encodings) == len(scale)
            and all(e.scale == float(s) for e, s in zip(t.encodings, scale, strict=True))
            and all(e.offset == -int(z) for e, z in zip(t.encodings, zero_point, strict=True))
        ]
        assert matches, f"no override with the scale/offset of the pair reading {read}"
    kinds = Counter(t.kind for t in c.overrides.tensors.values())
    assert kinds["param"] == 4 and kinds["activation"] >= 3  # two weights, two int32 biases
    biases = [t for t in c.overrides.tensors.values() if t.bitwidth == 32]
    assert len(biases) == 2 and all(e.signed for t in biases for e in t.encodings)
    assert "output" in c.overrides  # the graph output keeps its name
    assert "input" in c.overrides
    # ONNX Runtime folds the Relu into r1's zero-based range; the float graph gets it back, and the
    # encoding belongs to the Relu's output
    (relu,) = [n for n in c.model.graph.node if n.op_type == "Relu"]
    assert relu.output[0] in c.overrides and c.overrides[relu.output[0]].encodings[0].min == 0.0


def test_qdq_import_keeps_the_outputs_close(qdq):
    float_path, qdq_path, out, _ = qdq
    converted, reference, simulated = (
        _session(dlc.load(out).model),
        _session(str(float_path)),
        _session(str(qdq_path)),
    )
    for x in _samples(4, seed=9):
        want = reference.run(None, {"input": x})[0]
        got = converted.run(None, {"input": x})[0]
        quantized = simulated.run(None, {"input": x})[0]
        span = float(want.max() - want.min())
        # the float graph with dequantized weights: only the weights' rounding remains
        assert np.abs(got - want).max() < 0.02 * span
        # and it is closer to the float model than the fully quantized one is
        assert np.abs(got - want).mean() < np.abs(quantized - want).mean()


# ---- --quantization_overrides ---------------------------------------------------------------------------
MODEL = DIGITS / "model.onnx"


def _aimet_061() -> dict:
    return {
        "version": "0.6.1",
        "activation_encodings": {
            "relu1": [
                {"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "scale": 0.02, "offset": 0},
            ],
            "logits": [{"bitwidth": 16, "dtype": "float"}],
            "image": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "min": 0.0, "max": 1.0}],
        },
        "param_encodings": {
            "conv1.weight": [
                {"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "scale": 0.01 * (i + 1), "offset": 0}
                for i in range(8)
            ]
        },
    }


def _aimet_100() -> dict:
    return {
        "version": "1.0.0",
        "activation_encodings": [
            {"name": "relu2", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 16, "is_sym": False,
             "scale": [0.001], "offset": [0]},
            {"name": "flat", "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": 16},
        ],
        "param_encodings": [
            {"name": "fc.weight", "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 4, "is_sym": True,
             "scale": [0.1 + i / 100 for i in range(10)], "offset": [0] * 10},
            {"name": "conv2.bias", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 32, "is_sym": True,
             "scale": [1e-6], "offset": [0]},
        ],
    }  # fmt: skip


def test_overrides_file_0_6_1(tmp_path):
    enc = tmp_path / "enc.json"
    enc.write_text(json.dumps(_aimet_061()))
    out = tmp_path / "out.dlc"
    result = ok(run("convert", MODEL, "-o", out, "--quantization_overrides", enc))
    assert f"imported 4 encodings from {enc}" in result.stderr
    o = dlc.load(out).overrides
    assert sorted(o.tensors) == ["conv1.weight", "image", "logits", "relu1"]
    relu1 = o["relu1"].encodings[0]
    assert (relu1.bitwidth, relu1.scale, relu1.offset, relu1.min) == (8, 0.02, 0, 0.0)
    assert relu1.max == pytest.approx(255 * 0.02)
    image = o["image"].encodings[0]  # from min/max alone
    assert image.scale == pytest.approx(1 / 255) and image.offset == 0
    assert o["logits"].dtype == "float" and o["logits"].float_bitwidth == 16
    weight = o["conv1.weight"]
    assert [e.scale for e in weight.encodings] == [0.01 * (i + 1) for i in range(8)]
    assert all(e.is_symmetric and e.offset == 0 for e in weight.encodings)
    assert all(t.source == "overrides" for t in o.tensors.values())
    assert _info(out)["overrides"] == 4


def test_overrides_file_1_0_0(tmp_path):
    enc = tmp_path / "enc.json"
    enc.write_text(json.dumps(_aimet_100()))
    out = tmp_path / "out.dlc"
    ok(run("convert", MODEL, "-o", out, "--quantization_overrides", enc))
    o = dlc.load(out).overrides
    assert sorted(o.tensors) == ["conv2.bias", "fc.weight", "flat", "relu2"]
    relu2 = o["relu2"]
    assert (relu2.kind, relu2.bitwidth, relu2.encodings[0].scale, relu2.per_channel) == (
        "activation",
        16,
        0.001,
        False,
    )
    fc = o["fc.weight"]
    assert fc.per_channel and fc.axis == 0 and fc.bitwidth == 4
    assert [e.scale for e in fc.encodings] == pytest.approx([0.1 + i / 100 for i in range(10)])
    assert o["conv2.bias"].bitwidth == 32
    assert o["flat"].dtype == "float"
    # the stored overrides write back as the same AIMET file
    again = o.to_aimet("1.0.0")
    assert {e["name"]: e["scale"] for e in again["param_encodings"]} == {
        e["name"]: e["scale"] for e in _aimet_100()["param_encodings"]
    }


def test_overrides_naming_unknown_tensors_warn(tmp_path):
    data = _aimet_061()
    data["activation_encodings"]["not_in_the_model"] = data["activation_encodings"]["relu1"]
    enc = tmp_path / "enc.json"
    enc.write_text(json.dumps(data))
    result = ok(run("convert", MODEL, "-o", tmp_path / "out.dlc", "--quantization_overrides", enc))
    assert "1 encodings name tensors the model does not have: not_in_the_model" in result.stderr


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2, 3]", "not a JSON object"),
        ('{"version": "0.6.1"}', "no activation_encodings or param_encodings found"),
        ('{"activation_encodings": {"relu1": [{"bitwidth": "eight", "scale": 1}]}}', "unsupported bitwidth"),
        ('{"activation_encodings": {"relu1": [{"bitwidth": 8, "scale": -1, "offset": 0}]}}', "positive"),
        ('{"activation_encodings": [{"name": "relu1", "bw": 8, "scale": 0.1}]}', "'scale' and 'offset'"),
        ('{"param_encodings": {"conv1.weight": [{"bitwidth": 8}]}}', "needs scale/offset or min/max"),
    ],
)
def test_malformed_overrides_file_is_one_line(tmp_path, content, needle):
    enc = tmp_path / "enc.json"
    enc.write_text(content)
    out = tmp_path / "out.dlc"
    one_line_error(run("convert", MODEL, "-o", out, "--quantization_overrides", enc), 2, str(enc), needle)
    assert not out.exists()


def test_missing_overrides_file_is_one_line(tmp_path):
    missing = tmp_path / "nothing.json"
    one_line_error(
        run("convert", MODEL, "-o", tmp_path / "out.dlc", "--quantization_overrides", missing),
        2,
        str(missing),
        "no such encodings file",
    )


def test_info_json_and_tables_on_a_container_with_everything(tmp_path):
    from test_container import _full_container

    path = tmp_path / "full.dlc"
    _full_container().write(path)
    d = _info(path)
    assert d["quantized"] is True and d["encodings"] == 3 and d["overrides"] == 3
    assert d["op_counts"] == {"Conv": 2, "Relu": 2, "BatchNormalization": 1, "Flatten": 1, "Gemm": 1}
    assert d["parameters"] == 3850 and d["parameter_bytes"] == 3850 * 4
    assert [(r["id"], r["soc"], r["arch"], r["bytes"]) for r in d["records"]] == [
        ("sm8650", "sm8650", "v75", 99),
        ("sm8550", "sm8550", "v73", 256),
    ]
    table = ok(run("info", path)).stdout
    assert "Cache records" in table and "sm8650" in table and "v75" in table
