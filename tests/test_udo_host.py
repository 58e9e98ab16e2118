"""User-defined ops run on the host while a model is calibrated: prepare_session and --udo_package_path.

The "done when" of issue 7: write a UDO config for a scaled softmax, generate the package, fill in the
CPU kernel body, build it with make, quantize a model containing the op with --udo_package_path, and
check the quantized model's outputs against numpy.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from clirun import ok, run
from onnx import TensorProto, helper, numpy_helper
from realmodels import sqnr_db
from udotools import fill_body, generate, make, replace_function, scaled_softmax, session, write_config

from opendlc import container as dlc
from opendlc.errors import UsageError
from opendlc.udo_gen import abi
from opendlc.udo_gen.host_ops import CONTRIB_DOMAIN, prepare_session, recorded_errors

SOFTMAX_PKG = "ScaledSoftmaxPackage"
SOFTMAX_CONFIG = {
    "UdoPackage_0": {
        "UDO_PACKAGE_NAME": SOFTMAX_PKG,
        "Operators": [
            {
                "type": "ScaledSoftmax",
                "inputs": [{"name": "logits", "data_type": "FLOAT_32", "tensor_layout": "NHWC"}],
                "outputs": [{"name": "probabilities", "data_type": "FLOAT_32"}],
                "scalar_params": [{"name": "scale", "data_type": "FLOAT_32", "default_value": 1.0}],
                "core_types": ["CPU", "DSP"],
                "dsp_arch_types": ["v73"],
            }
        ],
    }
}
SOFTMAX_BODY = """\
  // softmax(scale * x) over the last axis
  (void)num_outputs;
  const OdlcUdoTensor &x = args->inputs[0];
  if (x.rank == 0)
    return odlc_udo_fail(error, error_size, ODLC_UDO_ERR_INVALID_ARGUMENT, "ScaledSoftmax: rank 0");
  const float scale = static_cast<float>(odlc_udo_find_param(args, "scale")->real);
  const size_t inner = static_cast<size_t>(x.dims[x.rank - 1]);
  const size_t outer = inner ? odlc_udo_num_elements(&x) / inner : 0;
  const float *in = static_cast<const float *>(x.data);
  float *out = static_cast<float *>(outputs[0].data);
  for (size_t o = 0; o < outer; ++o) {
    const float *row = in + o * inner;
    float *dst = out + o * inner;
    float top = scale * row[0];
    for (size_t i = 1; i < inner; ++i) top = std::max(top, scale * row[i]);
    double sum = 0.0;
    for (size_t i = 0; i < inner; ++i) sum += (dst[i] = std::exp(scale * row[i] - top));
    for (size_t i = 0; i < inner; ++i) dst[i] = static_cast<float>(dst[i] / sum);
  }
  return ODLC_UDO_OK;
"""


@pytest.fixture(scope="module")
def softmax_package(tmp_path_factory):
    """The scaled softmax package: config written, generated with the SDK command, body filled in, built."""
    tmp = tmp_path_factory.mktemp("scaled_softmax")
    config = write_config(tmp, SOFTMAX_CONFIG)
    ok(run("-p", config, "-o", tmp / "out", prog="snpe-udo-package-generator"))
    root = tmp / "out" / SOFTMAX_PKG
    fill_body(root, "ScaledSoftmax", SOFTMAX_BODY, includes="#include <algorithm>\n#include <cmath>\n")
    make(root, "cpu_x86")
    return root


def softmax_net(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x[1,6,16] -> MatMul(w) -> ScaledSoftmax(scale=2.5) -> Add(b) -> y."""
    rng = np.random.default_rng(seed)
    weights = {
        "w": (rng.normal(size=(16, 16)) * 0.4).astype(np.float32),
        "b": (rng.normal(size=16) * 0.1).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["logits"], name="matmul"),
        helper.make_node(
            "ScaledSoftmax", ["logits"], ["p"], name="udo_softmax", domain=SOFTMAX_PKG, scale=2.5
        ),
        helper.make_node("Add", ["p", "b"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "udo_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 16])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(SOFTMAX_PKG, 1)]
    )
    model.ir_version = 8
    return model, weights


def reference(x: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    return scaled_softmax(x.astype(np.float64) @ weights["w"], 2.5) + weights["b"]


def inputs(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(1, 6, 16)).astype(np.float32) for _ in range(n)]


def test_the_filled_in_kernel_runs_inside_onnxruntime(softmax_package):
    model, weights = softmax_net()
    sess = session(model, [str(softmax_package)])
    for x in inputs(3, seed=1):
        (y,) = sess.run(None, {"x": x})
        np.testing.assert_allclose(y, reference(x, weights), rtol=1e-5, atol=1e-6)
    # the model given is not modified; the one returned keeps every tensor name
    assert [n.op_type for n in model.graph.node] == ["MatMul", "ScaledSoftmax", "Add"]
    prepared = prepare_session(model, [str(softmax_package)], ort.SessionOptions())
    udo = next(n for n in prepared.graph.node if n.domain == CONTRIB_DOMAIN)
    assert list(udo.input) == ["logits"] and udo.output[0] == "p"


def test_default_parameter_values_come_from_the_config(softmax_package):
    node = helper.make_node("ScaledSoftmax", ["x"], ["y"], domain=SOFTMAX_PKG)  # no scale: default 1.0
    graph = helper.make_graph([node], "g", [tensor("x", [3, 4])], [tensor("y")])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(SOFTMAX_PKG, 1)]
    )
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 3
    (y,) = session(model, [str(softmax_package)]).run(None, {"x": x})
    np.testing.assert_allclose(y, scaled_softmax(x, 1.0), rtol=1e-5)


@pytest.mark.parametrize("which", ["folder", "registration", "implementation", "op_package_lib"])
def test_the_package_path_may_be_the_folder_or_either_library(softmax_package, which):
    libs = softmax_package / abi.HOST_LIB_DIR
    path = {
        "folder": str(softmax_package),
        "registration": str(libs / abi.registration_library(SOFTMAX_PKG)),
        "implementation": str(libs / abi.implementation_library(SOFTMAX_PKG, "CPU")),
        "op_package_lib": f"{libs / abi.registration_library(SOFTMAX_PKG)}:ScaledSoftmaxInterfaceProvider",
    }[which]
    model, weights = softmax_net()
    x = inputs(1, seed=2)[0]
    (y,) = session(model, [path]).run(None, {"x": x})
    np.testing.assert_allclose(y, reference(x, weights), rtol=1e-5, atol=1e-6)


def test_quantizing_a_model_with_the_udo_matches_numpy(softmax_package, tmp_path):
    from opendlc.quant.api import quantize
    from opendlc.quant.export import to_qdq_model
    from opendlc.quant.options import QuantizerOptions

    model, weights = softmax_net()
    path = tmp_path / "udo_net.onnx"
    onnx.save(model, path)
    options = QuantizerOptions(
        udo_package_path=[str(softmax_package / abi.HOST_LIB_DIR / f"libUdo{SOFTMAX_PKG}Reg.so")]
    )
    calibration = inputs(24, seed=3)
    quantized = quantize(dlc.load(path), [{"x": x} for x in calibration], options, progress=False)
    encodings = quantized.encodings
    for name in ("x", "logits", "p", "y"):  # the UDO's input and output are calibrated like any tensor
        assert name in encodings.tensors, name
    # the UDO's output range is what the kernel computed on the calibration data (min-max, 0 included)
    p_float = [scaled_softmax(x.astype(np.float64) @ weights["w"], 2.5) for x in calibration]
    p = encodings.tensors["p"].encodings[0]
    assert p.bitwidth == 8 and p.min == pytest.approx(0.0, abs=p.scale)
    assert p.max == pytest.approx(max(v.max() for v in p_float), abs=p.scale)

    qdq = to_qdq_model(quantized)
    sess = session(qdq, [str(softmax_package)])
    step = encodings.tensors["y"].encodings[0].scale
    for x in inputs(4, seed=4):
        (y,) = sess.run(None, {"x": x})
        ref = reference(x, weights)
        # 8-bit activations and weights: within a few steps of the output (measured: 2-6 steps, 34-37 dB)
        assert np.abs(y - ref).max() < 10 * step
        assert sqnr_db(ref, y) > 30
        assert not np.allclose(y, ref, atol=1e-6)  # and it is the quantized model that ran


@pytest.mark.parametrize(
    "prog, option",
    [
        ("snpe-dlc-quant", "--udo_package_path={reg}"),
        ("snpe-dlc-quantize", "--udo_package_path={impl}"),
        ("qairt-quantizer", "--op_package_lib={reg}:ScaledSoftmaxInterfaceProvider"),
    ],
)
def test_the_quantizer_commands_with_a_udo_package(softmax_package, tmp_path, prog, option):
    from opendlc.quant.export import to_qdq_model

    model, weights = softmax_net()
    onnx.save(model, tmp_path / "udo_net.onnx")
    lines = []
    for i, x in enumerate(inputs(8, seed=5)):
        x.tofile(tmp_path / f"x{i}.raw")
        lines.append(str(tmp_path / f"x{i}.raw"))
    (tmp_path / "inputs.txt").write_text("\n".join(lines) + "\n")
    reg = softmax_package / abi.HOST_LIB_DIR / abi.registration_library(SOFTMAX_PKG)
    args = [
        f"--input_dlc={tmp_path / 'udo_net.onnx'}",
        f"--input_list={tmp_path / 'inputs.txt'}",
        f"--output_dlc={tmp_path / 'q.dlc'}",
    ]
    impl = reg.parent / abi.implementation_library(SOFTMAX_PKG, "CPU")
    ok(run(*args, option.format(reg=reg, impl=impl), prog=prog))
    qdq = to_qdq_model(dlc.load(tmp_path / "q.dlc"))
    x = inputs(1, seed=6)[0]
    (y,) = session(qdq, [str(softmax_package)]).run(None, {"x": x})
    assert sqnr_db(reference(x, weights), y) > 25
    # without the package the custom op cannot be calibrated: one line, not a traceback
    result = run(*args, prog=prog)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and "ScaledSoftmax" in errors[0], result.stderr


# Parameters of every kind, several outputs, shapes the kernel decides -------------------------------
PARAMS_PKG = "HostOpsTest"
PARAMS_CONFIG = {
    "UdoPackage_0": {
        "UDO_PACKAGE_NAME": PARAMS_PKG,
        "Operators": [
            {
                "type": "AffineTag",
                "inputs": [{"name": "x", "data_type": "FLOAT_32"}],
                "outputs": [{"name": "y", "data_type": "FLOAT_32"}],
                "scalar_params": [
                    {"name": "alpha", "data_type": "FLOAT_32"},
                    {"name": "shift", "data_type": "INT_32", "default_value": 0},
                    {"name": "tag", "data_type": "STRING"},
                ],
                "tensor_params": [{"name": "bias", "data_type": "FLOAT_32", "dims": [4]}],
                "core_types": ["CPU"],
            },
            {
                "type": "RowStats",
                "inputs": [
                    {"name": "x", "data_type": "FLOAT_32"},
                    {"name": "more", "data_type": "FLOAT_32", "repeated": True},
                ],
                "outputs": [
                    {"name": "sum", "data_type": "FLOAT_32"},
                    {"name": "positives", "data_type": "INT_32"},
                ],
                "core_types": ["CPU"],
            },
            {
                "type": "OnlyOnDsp",
                "inputs": [{"name": "x", "data_type": "UINT_8"}],
                "outputs": [{"name": "y", "data_type": "UINT_8"}],
                "core_types": ["DSP"],
                "dsp_arch_types": ["v75"],
            },
        ],
    }
}
AFFINE_BODY = """\
  (void)num_outputs;
  const OdlcUdoParam *tag = odlc_udo_find_param(args, "tag");
  if (std::strcmp(tag->string, "ok") != 0)
    return odlc_udo_fail(error, error_size, ODLC_UDO_ERR_INVALID_ARGUMENT, "AffineTag: tag is '%s'",
                         tag->string);
  const float alpha = static_cast<float>(odlc_udo_find_param(args, "alpha")->real);
  const int64_t shift = odlc_udo_find_param(args, "shift")->integer;
  const OdlcUdoTensor &bias = odlc_udo_find_param(args, "bias")->tensor;
  const float *b = static_cast<const float *>(bias.data);
  const size_t nb = odlc_udo_num_elements(&bias);
  const float *x = static_cast<const float *>(args->inputs[0].data);
  float *y = static_cast<float *>(outputs[0].data);
  for (size_t i = 0; i < odlc_udo_num_elements(&outputs[0]); ++i) y[i] = alpha * x[i] + shift + b[i % nb];
  return ODLC_UDO_OK;
"""
ROWSTATS_SHAPES = """\
  // one value per row of input 0, summed over every input
  (void)error;
  (void)error_size;
  for (uint32_t i = 0; i < num_outputs; ++i) {
    outputs[i].rank = 1;
    outputs[i].dims[0] = args->inputs[0].dims[0];
  }
  return ODLC_UDO_OK;
"""
ROWSTATS_BODY = """\
  (void)num_outputs;
  (void)error;
  (void)error_size;
  const size_t rows = static_cast<size_t>(args->inputs[0].dims[0]);
  float *sum = static_cast<float *>(outputs[0].data);
  int32_t *positives = static_cast<int32_t *>(outputs[1].data);
  for (size_t r = 0; r < rows; ++r) {
    sum[r] = 0.0f;
    positives[r] = 0;
    for (uint32_t t = 0; t < args->num_inputs; ++t) {
      const size_t cols = odlc_udo_num_elements(&args->inputs[t]) / rows;
      const float *row = static_cast<const float *>(args->inputs[t].data) + r * cols;
      for (size_t c = 0; c < cols; ++c) {
        sum[r] += row[c];
        positives[r] += row[c] > 0;
      }
    }
  }
  return ODLC_UDO_OK;
"""


@pytest.fixture(scope="module")
def params_package(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("host_ops")
    root = generate(tmp, PARAMS_CONFIG)
    fill_body(root, "AffineTag", AFFINE_BODY, includes="#include <cstring>\n")
    rowstats = fill_body(root, "RowStats", ROWSTATS_BODY)
    replace_function(rowstats, f"{PARAMS_PKG}_RowStats_cpu_infer_output_shapes", ROWSTATS_SHAPES)
    make(root, "cpu_x86")
    return root


def tensor(name: str, shape=None, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def model_of(nodes, inputs_, outputs_, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs_, outputs_, list(initializers))
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(PARAMS_PKG, 1)]
    )


def affine_model(**attrs) -> onnx.ModelProto:
    return model_of(
        [helper.make_node("AffineTag", ["x"], ["y"], domain=PARAMS_PKG, name="affine", **attrs)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )


def test_scalar_string_and_tensor_parameters_reach_the_kernel(params_package):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    bias = np.array([0.5, -1, 2, 0.25], np.float32)
    for bias_attr in (numpy_helper.from_array(bias, "bias"), bias.tolist()):  # a tensor or a list of floats
        model = affine_model(alpha=1.5, shift=3, tag="ok", bias=bias_attr)
        (y,) = session(model, [str(params_package)]).run(None, {"x": x})
        np.testing.assert_allclose(y, 1.5 * x + 3 + bias, rtol=1e-6)
    model = affine_model(alpha=2.0, tag="ok", bias=bias.tolist())  # shift: default 0
    (y,) = session(model, [str(params_package)]).run(None, {"x": x})
    np.testing.assert_allclose(y, 2 * x + bias, rtol=1e-6)
    # the kernel's own failure message comes back
    sess = session(affine_model(alpha=1.0, tag="bad", bias=bias.tolist()), [str(params_package)])
    with pytest.raises(Exception, match="failed at node 'affine'"):
        sess.run(None, {"x": x})
    assert recorded_errors()[-1].endswith("failed: AffineTag: tag is 'bad'")


def test_several_outputs_repeated_inputs_and_kernel_decided_shapes(params_package):
    node = helper.make_node("RowStats", ["a", "b", "c"], ["s", "n"], domain=PARAMS_PKG)
    model = model_of(
        [node],
        [tensor(k, [3, d]) for k, d in (("a", 4), ("b", 2), ("c", 1))],
        [tensor("s"), tensor("n", elem=TensorProto.INT32)],
    )
    rng = np.random.default_rng(7)
    feeds = {k: rng.normal(size=(3, d)).astype(np.float32) for k, d in (("a", 4), ("b", 2), ("c", 1))}
    s, n = session(model, [str(params_package)]).run(None, feeds)
    whole = np.concatenate(list(feeds.values()), axis=1)
    assert s.shape == (3,) and n.dtype == np.int32
    np.testing.assert_allclose(s, whole.sum(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(n, (whole > 0).sum(axis=1))


def one_node(op_type: str, inputs_: list[str], name: str, elem=TensorProto.FLOAT, **attrs) -> onnx.ModelProto:
    node = helper.make_node(op_type, inputs_, ["y"], domain=PARAMS_PKG, name=name, **attrs)
    return model_of([node], [tensor("x", [2, 4], elem=elem)], [tensor("y", elem=elem)])


BIAS = [1.0] * 4
MISFITS = {
    "unknown attribute": (
        lambda: affine_model(alpha=1.0, tag="ok", bias=BIAS, gamma=2.0),
        "node 'affine': attribute 'gamma' is not a parameter of AffineTag in UDO package HostOpsTest "
        "(parameters: alpha, shift, tag, bias)",
    ),
    "missing attribute": (
        lambda: affine_model(tag="ok", bias=BIAS),
        "node 'affine': attribute 'alpha' (scalar parameter, FLOAT_32) is missing and "
        "HostOpsTest.Operators[0].scalar_params[0] gives no default_value",
    ),
    "not an integer": (
        lambda: affine_model(alpha=1.0, shift=1.5, tag="ok", bias=BIAS),
        "node 'affine': attribute 'shift': 1.5 is not an integer",
    ),
    "not a number": (
        lambda: affine_model(alpha="x", tag="ok", bias=BIAS),
        "node 'affine': attribute 'alpha': expected a number",
    ),
    "input count": (
        lambda: one_node("AffineTag", ["x", "x"], "two", alpha=1.0, tag="ok", bias=BIAS),
        "node 'two': 2 inputs, but AffineTag of UDO package HostOpsTest has 1",
    ),
    "not in the package": (
        lambda: one_node("Missing", ["x"], "m"),
        "node 'm': op type 'Missing' is not in UDO package HostOpsTest "
        "(its ops: AffineTag, RowStats, OnlyOnDsp)",
    ),
    "no CPU implementation": (
        lambda: one_node("OnlyOnDsp", ["x"], "d", elem=TensorProto.UINT8),
        "node 'd': OnlyOnDsp of UDO package HostOpsTest has no CPU implementation (core_types: DSP)",
    ),
}


@pytest.mark.parametrize("case", MISFITS)
def test_nodes_that_do_not_fit_the_package_are_one_line_errors(params_package, case):
    make_model, message = MISFITS[case]
    with pytest.raises(UsageError) as info:
        prepare_session(make_model(), [str(params_package)], ort.SessionOptions())
    assert message in str(info.value) and "\n" not in str(info.value)


def test_which_nodes_are_taken(params_package, softmax_package):
    # a standard op of the same name stays standard; the package's domain or an unknown domain is taken
    relu = helper.make_node("Relu", ["x"], ["r"])
    nodes = [
        relu,
        helper.make_node("AffineTag", ["r"], ["y1"], domain="my.custom", alpha=1.0, tag="ok", bias=[0.0] * 4),
    ]
    model = model_of(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, None)],
    )
    model.opset_import.append(helper.make_opsetid("my.custom", 1))
    prepared = prepare_session(model, [f"{params_package},{softmax_package}"], ort.SessionOptions())
    assert [n.domain for n in prepared.graph.node if n.op_type != "Gather"] == ["", CONTRIB_DOMAIN]
    # no node of the packages: the model comes back as it was, nothing registered
    plain = model_of([relu], [tensor("x", [2, 4])], [tensor("r")])
    assert prepare_session(plain, [str(params_package)], ort.SessionOptions()) == plain
    assert prepare_session(plain, [], ort.SessionOptions()) is plain


def test_package_paths_that_are_not_packages(tmp_path, params_package):
    def error(path) -> str:
        with pytest.raises(UsageError) as info:
            prepare_session(affine_model(), [str(path)], ort.SessionOptions())
        return str(info.value)

    assert error(tmp_path / "nowhere") == f"{tmp_path / 'nowhere'}: no such UDO package or library"
    (tmp_path / "libfoo.so").write_bytes(b"")
    assert "expected a UDO package folder, its libUdo<Package>Reg.so" in error(tmp_path / "libfoo.so")
    assert "not a UDO package folder" in error(tmp_path)
    unbuilt = generate(tmp_path, PARAMS_CONFIG)
    assert (
        error(unbuilt)
        == f"{unbuilt}: the package's host libraries are not built (run: make -C {unbuilt} cpu_x86)"
    )
    fake = tmp_path / "libUdoFakeReg.so"
    fake.write_bytes(b"not a library")
    assert "cannot load the library" in error(fake)


def test_the_quantizer_reports_a_package_that_is_not_built(tmp_path):
    from opendlc.quant.api import quantize
    from opendlc.quant.options import QuantizerOptions

    unbuilt = generate(tmp_path, SOFTMAX_CONFIG)
    model, _ = softmax_net()
    onnx.save(model, tmp_path / "m.onnx")
    options = QuantizerOptions(udo_package_path=[str(unbuilt)])
    with pytest.raises(UsageError, match=f"^{unbuilt}: the package's host libraries are not built"):
        quantize(
            dlc.load(tmp_path / "m.onnx"), [{"x": x} for x in inputs(2, seed=8)], options, progress=False
        )
