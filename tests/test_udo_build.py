"""The generated skeletons build with make and the system compiler; the untouched CPU body fails loudly."""

from __future__ import annotations

import ctypes

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from udotools import generate, make, sdk_style_config, session

from opendlc.udo_gen import abi
from opendlc.udo_gen.host_ops import error_from_exception, recorded_errors

PKG = "SoftmaxUdoPackage"


@pytest.fixture(scope="module")
def skeleton(tmp_path_factory):
    """The SDK-style package (CPU, GPU, DSP v68/v73), generated and built for the host, untouched."""
    tmp = tmp_path_factory.mktemp("skeleton")
    root = generate(tmp, sdk_style_config())
    result = make(root, "cpu_x86")
    return root, result


def test_the_untouched_cpu_skeleton_builds_without_warnings(skeleton):
    root, result = skeleton
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stderr
    libs = root / abi.HOST_LIB_DIR
    assert sorted(p.name for p in libs.iterdir()) == [f"libUdo{PKG}ImplCpu.so", f"libUdo{PKG}Reg.so"]


def test_the_libraries_export_the_documented_functions(skeleton):
    root, _ = skeleton
    reg = ctypes.CDLL(str(root / abi.HOST_LIB_DIR / abi.registration_library(PKG)))

    def function(lib, name, restype, argtypes=()):
        f = getattr(lib, f"{PKG}_udo_{name}")
        f.restype, f.argtypes = restype, list(argtypes)
        return f

    assert function(reg, "abi_version", ctypes.c_uint32)() == abi.ABI_VERSION
    assert function(reg, "package_name", ctypes.c_char_p)() == PKG.encode()
    assert b'"type": "Softmax"' in function(reg, "package_config", ctypes.c_char_p)()
    op_type = function(reg, "op_type", ctypes.c_char_p, [ctypes.c_uint32])
    assert (function(reg, "num_ops", ctypes.c_uint32)(), op_type(0), op_type(1)) == (1, b"Softmax", None)
    impl = function(reg, "implementation_library", ctypes.c_char_p, [ctypes.c_char_p])
    assert impl(b"CPU") == f"libUdo{PKG}ImplCpu.so".encode()
    assert impl(b"GPU") == f"libUdo{PKG}ImplGpu.so".encode() and impl(b"NPU") is None
    cpu = ctypes.CDLL(str(root / abi.HOST_LIB_DIR / abi.implementation_library(PKG, "CPU")))
    for name in ("abi_version", "infer_output_shapes", "execute"):
        assert hasattr(cpu, f"{PKG}_udo_{name}"), name
    # the per-operator functions are the library's own business: not exported
    assert not hasattr(cpu, f"{PKG}_Softmax_cpu_execute")


def softmax_model(domain: str = PKG, **attrs) -> onnx.ModelProto:
    node = helper.make_node("Softmax", ["x"], ["y"], domain=domain, name="my_softmax", **attrs)
    graph = helper.make_graph(
        [node, helper.make_node("Relu", ["y"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    )


def test_the_untouched_compute_body_fails_loudly_naming_the_op(skeleton):
    root, _ = skeleton
    model = softmax_model(weights=helper.make_tensor("w", TensorProto.FLOAT, [5], [1.0] * 5))
    sess = session(model, [str(root)])
    with pytest.raises(Exception) as info:
        sess.run(None, {"x": np.ones((2, 5), np.float32)})
    assert "opendlc UDO 'Softmax' of package 'SoftmaxUdoPackage' failed at node 'my_softmax'" in str(
        info.value
    )
    expected = (
        "UDO node 'my_softmax' (SoftmaxUdoPackage::Softmax, libUdoSoftmaxUdoPackageImplCpu.so) failed: "
        "op 'Softmax' of package 'SoftmaxUdoPackage': the CPU compute body is not implemented yet "
        "(fill in SoftmaxUdoPackage_Softmax_cpu_execute in jni/src/CPU/Softmax.cpp)"
    )
    assert recorded_errors()[-1] == expected
    assert str(error_from_exception(info.value)) == expected
    assert error_from_exception(RuntimeError("something else")) is None


def test_the_dsp_kernels_compile_for_the_host(skeleton):
    root, _ = skeleton
    result = make(root, "dsp_x86")
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stderr
    for arch in ("v68", "v73"):
        assert (root / abi.HOST_LIB_DIR / f"dsp_{arch}" / abi.implementation_library(PKG, "DSP")).is_file()


def test_cross_builds_say_which_toolchain_is_missing(skeleton):
    root, _ = skeleton
    env_free = {"HEXAGON_TOOLS_ROOT": "", "ANDROID_NDK_ROOT": ""}
    args = [f"{k}={v}" for k, v in env_free.items()]
    result = make(root, "dsp_v68", *args, check=False)
    assert result.returncode != 0
    assert "building for the DSP needs hexagon-clang++" in result.stderr
    result = make(root, "cpu_android", *args, check=False)
    assert result.returncode != 0
    assert "needs the Android NDK: set ANDROID_NDK_ROOT" in result.stderr


def test_make_clean_and_the_default_target(tmp_path):
    config = sdk_style_config("Plain")
    op = config["UdoPackage_0"]["Operators"][0]
    op["core_types"] = ["CPU"]
    del op["dsp_arch_types"]
    for t in op["inputs"] + op["outputs"]:
        t["data_type"] = t.pop("per_core_data_types")["CPU"]
    root = generate(tmp_path, config)
    make(root)  # the default target builds the host libraries
    assert (root / abi.HOST_LIB_DIR / "libUdoPlainImplCpu.so").is_file()
    make(root, "clean")
    assert not (root / "libs").exists() and not (root / "obj").exists()
