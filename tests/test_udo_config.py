"""UDO package configs: the SDK's format is read; every problem is one line naming its JSON path."""

from __future__ import annotations

import copy
import json

import pytest
from clirun import one_line_error, run
from udotools import sdk_style_config, write_config

from opendlc.errors import UsageError
from opendlc.udo_gen.config import DATA_TYPES, load_config, parse_config


def config_error(config) -> str:
    with pytest.raises(UsageError) as info:
        parse_config(config)
    message = str(info.value)
    assert "\n" not in message
    return message


def two_ops() -> dict:
    config = sdk_style_config()
    op = copy.deepcopy(config["UdoPackage_0"]["Operators"][0])
    op["type"] = "Second"
    op["inputs"] = [{"name": "a", "data_type": "FLOAT_32"}, {"name": "b", "data_type": "FLOAT_32"}]
    config["UdoPackage_0"]["Operators"].append(op)
    return config


def test_the_sdk_documented_shape_is_read():
    (package,) = parse_config(two_ops())
    assert package.key == "UdoPackage_0" and package.name == "SoftmaxUdoPackage"
    assert package.core_types == ("CPU", "GPU", "DSP")
    assert package.dsp_arch_types == ("v68", "v73")
    softmax, second = package.operators
    assert softmax.type == "Softmax" and softmax.core_types == ("CPU", "GPU", "DSP")
    x = softmax.inputs[0]
    assert (x.name, x.data_type("CPU"), x.data_type("DSP"), x.quantization_mode) == (
        "Placeholder",
        "FLOAT_32",
        "UINT_8",
        "TF",
    )
    assert x.layout == "NHWC" and not x.static
    (axis,) = softmax.scalar_params
    assert (axis.name, axis.data_type, axis.default_value) == ("axis", "INT_32", -1)
    (weights,) = softmax.tensor_params
    assert (weights.kind, weights.data_type) == ("tensor", "FLOAT_32")
    # data_type stands for every core type of the operator
    assert [t.data_types for t in second.inputs] == [
        {"CPU": "FLOAT_32", "GPU": "FLOAT_32", "DSP": "FLOAT_32"}
    ] * 2


def test_package_path_and_core_type_spelling():
    config = sdk_style_config()
    pkg = config["UdoPackage_0"]
    pkg["UDO_PACKAGE_PATH"] = "some/where"
    pkg["Operators"][0]["core_types"] = ["cpu", "Dsp"]
    pkg["Operators"][0]["dsp_arch_types"] = ["V68"]
    for t in pkg["Operators"][0]["inputs"] + pkg["Operators"][0]["outputs"]:
        del t["per_core_data_types"]["GPU"]
    (package,) = parse_config(config)
    assert package.package_path == "some/where"
    assert package.core_types == ("CPU", "DSP") and package.dsp_arch_types == ("v68",)


DEL = object()  # remove the key
PKG0 = ("UdoPackage_0",)
OP0, OP1 = (*PKG0, "Operators", 0), (*PKG0, "Operators", 1)
IN0, IN1 = (*OP0, "inputs", 0), (*OP1, "inputs", 0)
P0, T0 = (*OP0, "scalar_params", 0), (*OP0, "tensor_params", 0)


def json_path(keys: tuple) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else k) for i, k in enumerate(keys))


UNKNOWN_FIELDS = [
    (PKG0, "UDO_PACKAGE_VERSION"),
    (OP1, "kind"),
    (IN1, "dtype"),
    ((*OP0, "outputs", 0), "layout"),
    (P0, "tensor_layout"),
    (T0, "per_core"),
]


@pytest.mark.parametrize("where, field", UNKNOWN_FIELDS)
def test_an_unknown_field_names_its_path(where, field):
    config = two_ops()
    target = config
    for key in where:
        target = target[key]
    target[field] = "x"
    message = config_error(config)
    assert message.startswith(f"{json_path(where)}.{field}: unknown field (known: "), message


def test_an_unknown_data_type_names_its_path_and_the_known_ones():
    config = two_ops()
    config["UdoPackage_0"]["Operators"][1]["inputs"][0]["data_type"] = "FLOAT_64"
    message = config_error(config)
    known = ", ".join(DATA_TYPES)
    assert (
        message
        == f"UdoPackage_0.Operators[1].inputs[0].data_type: unknown data type 'FLOAT_64' (known: {known})"
    )


def test_an_unknown_per_core_data_type_and_param_data_type():
    config = two_ops()
    config["UdoPackage_0"]["Operators"][0]["outputs"][0]["per_core_data_types"]["DSP"] = "UINT_4"
    assert config_error(config).startswith(
        "UdoPackage_0.Operators[0].outputs[0].per_core_data_types.DSP: unknown data type 'UINT_4'"
    )
    config = two_ops()
    config["UdoPackage_0"]["Operators"][0]["scalar_params"][0]["data_type"] = "INT_64"
    assert config_error(config).startswith(
        "UdoPackage_0.Operators[0].scalar_params[0].data_type: unknown data type"
    )


def test_an_unknown_core_type_names_its_path_and_the_registered_ones():
    config = two_ops()
    config["UdoPackage_0"]["Operators"][1]["core_types"] = ["CPU", "NPU"]
    assert config_error(config) == (
        "UdoPackage_0.Operators[1].core_types[1]: unknown core type 'NPU' (known: CPU, DSP, GPU)"
    )
    config = two_ops()
    config["UdoPackage_0"]["Operators"][0]["inputs"][0]["per_core_data_types"]["HTA"] = "UINT_8"
    assert config_error(config) == (
        "UdoPackage_0.Operators[0].inputs[0].per_core_data_types: unknown core type 'HTA' "
        "(known: CPU, DSP, GPU)"
    )


def test_dsp_architectures():
    config = two_ops()
    config["UdoPackage_0"]["Operators"][0]["dsp_arch_types"] = ["v68", "v99"]
    message = config_error(config)
    assert message.startswith("UdoPackage_0.Operators[0].dsp_arch_types[1]: unknown DSP architecture 'v99'")
    assert "v65" in message and "v81" in message
    config = two_ops()
    del config["UdoPackage_0"]["Operators"][1]["dsp_arch_types"]
    assert config_error(config).startswith(
        "UdoPackage_0.Operators[1].dsp_arch_types: required when core_types includes DSP"
    )


# (where in the config, what to change there, how the message starts; "@" stands for the JSON path)
PROBLEMS = [
    (PKG0, {"UDO_PACKAGE_NAME": DEL}, "UdoPackage_0.UDO_PACKAGE_NAME: required"),
    (
        PKG0,
        {"UDO_PACKAGE_NAME": "my package"},
        "UdoPackage_0.UDO_PACKAGE_NAME: package name 'my package' must",
    ),
    (PKG0, {"Operators": DEL}, "UdoPackage_0.Operators: required"),
    (PKG0, {"Operators": []}, "UdoPackage_0.Operators: the package defines no operator"),
    (PKG0, {"UDO_PACKAGE_CORETYPES": ["CPU"]}, "@.Operators[0].core_types[1]: core type 'GPU' is not in"),
    (OP1, {"type": DEL}, "@.type: required"),
    (OP1, {"type": "Softmax"}, "@.type: operator 'Softmax' is already defined at UdoPackage_0.Operators[0]"),
    (OP1, {"type": "2x"}, "@.type: operator type '2x' must be a C identifier"),
    (OP1, {"inputs": []}, "@.inputs: an operator needs at least one input"),
    (OP1, {"outputs": {}}, "@.outputs: expected a list, got an object"),
    (OP1, {"core_types": "CPU"}, "@.core_types: expected a list, got a string"),
    (IN1, {"static": "yes"}, "@.static: expected true or false, got a string"),
    (IN1, {"tensor_layout": "HWCN"}, "@.tensor_layout: unknown tensor layout 'HWCN' (known: NHWC, NCHW"),
    (IN1, {"quantization_mode": "POWER2"}, "@.quantization_mode: unknown quantization mode 'POWER2'"),
    (IN1, {"data_type": DEL}, "@: needs data_type or per_core_data_types"),
    (IN0, {"data_type": "FLOAT_32"}, "@: give data_type or per_core_data_types, not both"),
    ((*IN0, "per_core_data_types"), {"GPU": DEL}, "@: no data type for core type GPU"),
    (IN1, {"dims": [1, -3]}, "@.dims[1]: expected a dimension"),
    (IN1, {"repeated": True}, "@.repeated: only the last input may repeat"),
    (P0, {"name": DEL}, "@.name: required"),
    (P0, {"data_type": DEL}, "@.data_type: required"),
    (P0, {"default_value": "x"}, "@.default_value: expected a number (INT_32 parameter), got a string"),
    (
        T0,
        {"name": "axis"},
        "@.name: parameter 'axis' is already defined at UdoPackage_0.Operators[0].scalar_params[0]",
    ),
    (T0, {"default_value": [1, "x"]}, "@.default_value[1]: expected a number, got a string"),
    ((), {"UdoPackage_1": 5}, "UdoPackage_1: expected an object, got a number"),
]


@pytest.mark.parametrize("where, change, start", PROBLEMS, ids=[p[2].split(":")[0] for p in PROBLEMS])
def test_every_problem_is_one_line_naming_its_path(where, change, start):
    config = two_ops()
    target = config
    for key in where:
        target = target[key]
    for key, value in change.items():
        if value is DEL:
            del target[key]
        else:
            target[key] = value
    message = config_error(config)
    expected = start.replace("@", json_path(where)) if start.startswith("@") else start
    assert message.startswith(expected), message


def test_package_names_are_unique():
    config = two_ops()
    config["UdoPackage_1"] = copy.deepcopy(config["UdoPackage_0"])
    assert config_error(config) == (
        "UdoPackage_1.UDO_PACKAGE_NAME: 'SoftmaxUdoPackage' is also the name of UdoPackage_0"
    )


def test_not_a_config_at_all():
    assert config_error([1, 2]).startswith("the config must be a JSON object of packages, not a list")
    assert config_error({}).startswith("the config defines no package")


def test_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(UsageError, match=f"^{missing}: no such config file$"):
        load_config(missing)
    # the SDK's documentation prints configs with trailing commas, which are not JSON
    bad = tmp_path / "bad.json"
    bad.write_text('{"UdoPackage_0": {"Operators": [],}}\n')
    with pytest.raises(UsageError, match=r"bad\.json: not valid JSON: .*\(line 1, column \d+\)$"):
        load_config(bad)
    config = two_ops()
    config["UdoPackage_0"]["Operators"][1]["inputs"][0]["data_type"] = "FLOAT_64"
    path = write_config(tmp_path, config)
    with pytest.raises(
        UsageError, match=r"udo\.json: UdoPackage_0\.Operators\[1\]\.inputs\[0\]\.data_type: unknown"
    ):
        load_config(path)


@pytest.mark.parametrize("prog", ["snpe-udo-package-generator", "opendlc"])
def test_the_commands_print_the_problem_as_one_line(prog, tmp_path):
    config = two_ops()
    config["UdoPackage_0"]["Operators"][1]["core_types"] = ["CPU", "NPU"]
    path = write_config(tmp_path, config)
    args = ["-p", path, "-o", tmp_path / "out"]
    result = run(*(["udo", "generate"] if prog == "opendlc" else []), *args, prog=prog)
    one_line_error(result, 2, "UdoPackage_0.Operators[1].core_types[1]: unknown core type 'NPU'", prog=prog)
    assert not (tmp_path / "out").exists()
    # the config itself is left as it was
    assert json.loads(path.read_text()) == config
