"""The SDK's UDO package config (JSON): read it, validate it, describe it as typed objects.

A config holds one or more packages, each a JSON object under a key such as ``UdoPackage_0``::

    {"UdoPackage_0": {"UDO_PACKAGE_NAME": "MyPackage", "UDO_PACKAGE_PATH": "out",
                      "Operators": [{"type": "MyOp", "core_types": ["CPU", "DSP"], "dsp_arch_types": ["v68"],
                                     "inputs": [{"name": "x", "data_type": "FLOAT_32"}],
                                     "outputs": [{"name": "y", "per_core_data_types": {"CPU": "FLOAT_32",
                                                                                      "DSP": "UINT_8"}}],
                                     "scalar_params": [{"name": "alpha", "data_type": "FLOAT_32"}]}]}}

Every problem is reported as one line naming its JSON path, e.g.
``UdoPackage_0.Operators[1].inputs[0].data_type: unknown data type 'FLOAT_64' (known: ...)``.
The core types and DSP architectures a config may name are those of the registered UDO template sets.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opendlc.errors import UsageError

log = logging.getLogger("opendlc.udo")

# Data types, with the numbers opendlc's generated C header gives them (ODLC_UDO_<NAME>).
DATA_TYPES: dict[str, int] = {
    "FLOAT_16": 1,
    "FLOAT_32": 2,
    "FIXED_4": 3,
    "FIXED_8": 4,
    "FIXED_16": 5,
    "UINT_8": 6,
    "UINT_16": 7,
    "UINT_32": 8,
    "INT_8": 9,
    "INT_16": 10,
    "INT_32": 11,
    "STRING": 12,
}
# The data types a host (x86) CPU kernel can be handed, as numpy type names.
HOST_NUMPY_TYPES: dict[str, str] = {
    "FLOAT_16": "float16",
    "FLOAT_32": "float32",
    "UINT_8": "uint8",
    "UINT_16": "uint16",
    "UINT_32": "uint32",
    "INT_8": "int8",
    "INT_16": "int16",
    "INT_32": "int32",
}
TENSOR_LAYOUTS: dict[str, int] = {
    "NHWC": 1,
    "NCHW": 2,
    "NDCHW": 3,
    "GPU_OPTIMAL1": 4,
    "GPU_OPTIMAL2": 5,
    "DSP_OPTIMAL1": 6,
    "DSP_OPTIMAL2": 7,
    "NONTRIVIAL": 8,
}
QUANTIZATION_MODES: dict[str, int] = {"TF": 1, "SKIP": 2, "QMN": 3}

PACKAGE_FIELDS = (
    "Operators",
    "UDO_PACKAGE_NAME",
    "UDO_PACKAGE_PATH",
    "UDO_PACKAGE_CORETYPES",
    "UDO_PACKAGE_DSP_ARCH_TYPES",
    "SNPE_UDO_ROOT",  # where the SDK's UDO headers are; opendlc generates its own, so it is ignored
)
OPERATOR_FIELDS = (
    "type",
    "inputs",
    "outputs",
    "scalar_params",
    "tensor_params",
    "core_types",
    "dsp_arch_types",
)
TENSOR_FIELDS = (
    "name",
    "data_type",
    "per_core_data_types",
    "static",
    "tensor_layout",
    "quantization_mode",
    "dims",
    "default_value",
    "data",
    "repeated",
)
SCALAR_PARAM_FIELDS = ("name", "data_type", "default_value")
TENSOR_PARAM_FIELDS = (
    "name",
    "data_type",
    "tensor_layout",
    "quantization_mode",
    "dims",
    "static",
    "default_value",
    "data",
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class UdoTensor:
    """An input or output of an operator."""

    name: str
    data_types: Mapping[str, str]  # core type -> data type
    path: str  # JSON path, for messages
    static: bool = False
    layout: str = "NHWC"
    quantization_mode: str = "TF"
    dims: tuple[int, ...] | None = None
    default_value: Any = None
    repeated: bool = False

    def data_type(self, core_type: str) -> str:
        return self.data_types[core_type]


@dataclass(frozen=True)
class UdoParam:
    """A scalar or tensor parameter of an operator (an attribute of the ONNX node)."""

    name: str
    kind: str  # "scalar" or "tensor"
    data_type: str
    path: str
    layout: str = "NHWC"
    dims: tuple[int, ...] | None = None
    default_value: Any = None


@dataclass(frozen=True)
class UdoOperator:
    type: str
    inputs: tuple[UdoTensor, ...]
    outputs: tuple[UdoTensor, ...]
    scalar_params: tuple[UdoParam, ...]
    tensor_params: tuple[UdoParam, ...]
    core_types: tuple[str, ...]
    dsp_arch_types: tuple[str, ...]
    path: str

    @property
    def params(self) -> tuple[UdoParam, ...]:
        return self.scalar_params + self.tensor_params


@dataclass(frozen=True)
class UdoPackage:
    """One ``UdoPackage_N`` object of a config."""

    key: str  # "UdoPackage_0"
    name: str
    operators: tuple[UdoOperator, ...]
    core_types: tuple[str, ...]
    dsp_arch_types: tuple[str, ...]
    package_path: str | None  # UDO_PACKAGE_PATH, as written
    raw: Mapping[str, Any] = field(repr=False)  # the package's JSON object, as written
    config_name: str = "udo_config.json"  # file name of the config it came from
    config_text: str = field(default="", repr=False)  # the whole config file, as read

    def operators_for(self, core_type: str, dsp_arch: str = "") -> list[UdoOperator]:
        return [
            op
            for op in self.operators
            if core_type in op.core_types and (not dsp_arch or dsp_arch in op.dsp_arch_types)
        ]


def known_targets() -> tuple[list[str], list[str]]:
    """The core types and DSP architectures of the registered UDO template sets."""
    from opendlc.plugin_manager import get_plugin_manager

    sets = get_plugin_manager().udo_template_sets.items()
    core_types = sorted({s.core_type for s in sets if s.core_type})
    dsp_archs = sorted({s.dsp_arch for s in sets if s.core_type == "DSP" and s.dsp_arch}, key=_arch_key)
    return core_types, dsp_archs


def _arch_key(arch: str) -> tuple[int, str]:
    digits = re.sub(r"\D", "", arch)
    return (int(digits) if digits else 0, arch)


def load_config(
    path: str | Path,
    *,
    known_core_types: Iterable[str] | None = None,
    known_dsp_archs: Iterable[str] | None = None,
) -> list[UdoPackage]:
    """Read and validate the config file at ``path``; problems are one-line UsageErrors naming it."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")  # line endings kept: config/ gets an exact copy
    except FileNotFoundError:
        raise UsageError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder, not a config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read the config ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    try:
        return parse_config(
            data,
            known_core_types=known_core_types,
            known_dsp_archs=known_dsp_archs,
            config_name=path.name,
            config_text=text,
        )
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None


def parse_config(
    data: Any,
    *,
    known_core_types: Iterable[str] | None = None,
    known_dsp_archs: Iterable[str] | None = None,
    config_name: str = "udo_config.json",
    config_text: str = "",
) -> list[UdoPackage]:
    """Validate a config already parsed from JSON; return its packages in the order written."""
    if known_core_types is None or known_dsp_archs is None:
        registered_cores, registered_archs = known_targets()
        known_core_types = registered_cores if known_core_types is None else known_core_types
        known_dsp_archs = registered_archs if known_dsp_archs is None else known_dsp_archs
    checker = _Checker(list(known_core_types), list(known_dsp_archs))
    if not isinstance(data, dict):
        raise UsageError(f"the config must be a JSON object of packages, not {_kind(data)}")
    if not data:
        raise UsageError("the config defines no package (expected an object such as UdoPackage_0)")
    packages = [
        checker.package(key, value, config_name, config_text or json.dumps(data, indent=2))
        for key, value in data.items()
    ]
    seen: dict[str, str] = {}
    for p in packages:
        if p.name in seen:
            raise UsageError(f"{p.key}.UDO_PACKAGE_NAME: '{p.name}' is also the name of {seen[p.name]}")
        seen[p.name] = p.key
    return packages


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _known(values: Iterable[str]) -> str:
    return ", ".join(values) or "none"


class _Checker:
    def __init__(self, core_types: list[str], dsp_archs: list[str]) -> None:
        self.core_types = core_types
        self.dsp_archs = dsp_archs

    # Shapes of values ---------------------------------------------------------------------------
    @staticmethod
    def obj(value: Any, path: str, known_fields: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise UsageError(f"{path}: expected an object, got {_kind(value)}")
        for key in value:
            if key not in known_fields:
                raise UsageError(f"{path}.{key}: unknown field (known: {_known(known_fields)})")
        return value

    @staticmethod
    def list_(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise UsageError(f"{path}: expected a list, got {_kind(value)}")
        return value

    @staticmethod
    def str_(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise UsageError(f"{path}: expected a string, got {_kind(value)}")
        return value

    @staticmethod
    def bool_(value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise UsageError(f"{path}: expected true or false, got {_kind(value)}")
        return value

    @classmethod
    def identifier(cls, value: Any, path: str, what: str) -> str:
        text = cls.str_(value, path)
        if not _IDENTIFIER.fullmatch(text):
            raise UsageError(
                f"{path}: {what} '{text}' must be a C identifier (letters, digits, _; not starting with "
                "a digit), since it names files and functions of the package"
            )
        return text

    @classmethod
    def choice(cls, value: Any, path: str, known: Iterable[str], what: str, fold=str.upper) -> str:
        text = cls.str_(value, path)
        known = list(known)
        folded = {fold(k): k for k in known}
        if fold(text) not in folded:
            raise UsageError(f"{path}: unknown {what} '{text}' (known: {_known(known)})")
        return folded[fold(text)]

    def core_type(self, value: Any, path: str) -> str:
        return self.choice(value, path, self.core_types, "core type")

    def dsp_arch(self, value: Any, path: str) -> str:
        return self.choice(value, path, self.dsp_archs, "DSP architecture", fold=str.lower)

    def data_type(self, value: Any, path: str) -> str:
        return self.choice(value, path, DATA_TYPES, "data type")

    def dims(self, value: Any, path: str) -> tuple[int, ...]:
        dims = self.list_(value, path)
        for i, d in enumerate(dims):
            if isinstance(d, bool) or not isinstance(d, int) or d < 0:
                raise UsageError(f"{path}[{i}]: expected a dimension (an integer >= 0), got {d!r}")
        return tuple(dims)

    def unique_list(self, value: Any, path: str, item) -> tuple[str, ...]:
        out: list[str] = []
        for i, v in enumerate(self.list_(value, path)):
            name = item(v, f"{path}[{i}]")
            if name not in out:
                out.append(name)
        return tuple(out)

    # The structure ------------------------------------------------------------------------------
    def package(self, key: str, value: Any, config_name: str, config_text: str) -> UdoPackage:
        pkg = self.obj(value, key, PACKAGE_FIELDS)
        if "UDO_PACKAGE_NAME" not in pkg:
            raise UsageError(f"{key}.UDO_PACKAGE_NAME: required (the package's name)")
        name = self.identifier(pkg["UDO_PACKAGE_NAME"], f"{key}.UDO_PACKAGE_NAME", "package name")
        package_path = None
        if "UDO_PACKAGE_PATH" in pkg:
            package_path = self.str_(pkg["UDO_PACKAGE_PATH"], f"{key}.UDO_PACKAGE_PATH") or None
        if "SNPE_UDO_ROOT" in pkg:
            self.str_(pkg["SNPE_UDO_ROOT"], f"{key}.SNPE_UDO_ROOT")
            log.debug("%s.SNPE_UDO_ROOT is ignored: opendlc packages use their own headers", key)
        if "Operators" not in pkg:
            raise UsageError(f"{key}.Operators: required (a list of operators)")
        ops_path = f"{key}.Operators"
        ops_list = self.list_(pkg["Operators"], ops_path)
        if not ops_list:
            raise UsageError(f"{ops_path}: the package defines no operator")
        operators = tuple(self.operator(v, f"{ops_path}[{i}]") for i, v in enumerate(ops_list))
        seen: dict[str, str] = {}
        for op in operators:
            if op.type in seen:
                raise UsageError(
                    f"{op.path}.type: operator '{op.type}' is already defined at {seen[op.type]}"
                )
            seen[op.type] = op.path

        if "UDO_PACKAGE_CORETYPES" in pkg:
            path = f"{key}.UDO_PACKAGE_CORETYPES"
            core_types = self.unique_list(pkg["UDO_PACKAGE_CORETYPES"], path, self.core_type)
            for op in operators:
                for i, c in enumerate(op.core_types):
                    if c not in core_types:
                        raise UsageError(
                            f"{op.path}.core_types[{i}]: core type '{c}' is not in {path} "
                            f"({_known(core_types)})"
                        )
        else:
            core_types = tuple(dict.fromkeys(c for op in operators for c in op.core_types))  # as first named
        used_archs = {a for op in operators for a in op.dsp_arch_types}
        if "UDO_PACKAGE_DSP_ARCH_TYPES" in pkg:
            path = f"{key}.UDO_PACKAGE_DSP_ARCH_TYPES"
            dsp_archs = self.unique_list(pkg["UDO_PACKAGE_DSP_ARCH_TYPES"], path, self.dsp_arch)
            missing = sorted(used_archs - set(dsp_archs), key=_arch_key)
            if missing:
                raise UsageError(f"{path}: lacks {', '.join(missing)}, which operators of the package name")
        else:
            dsp_archs = tuple(a for a in self.dsp_archs if a in used_archs)
        return UdoPackage(
            key=key,
            name=name,
            operators=operators,
            core_types=core_types,
            dsp_arch_types=dsp_archs,
            package_path=package_path,
            raw=pkg,
            config_name=config_name,
            config_text=config_text,
        )

    def operator(self, value: Any, path: str) -> UdoOperator:
        op = self.obj(value, path, OPERATOR_FIELDS)
        for required in ("type", "inputs", "outputs", "core_types"):
            if required not in op:
                raise UsageError(f"{path}.{required}: required")
        op_type = self.identifier(op["type"], f"{path}.type", "operator type")
        core_types = self.unique_list(op["core_types"], f"{path}.core_types", self.core_type)
        if not core_types:
            raise UsageError(f"{path}.core_types: names no core type (known: {_known(self.core_types)})")
        dsp_archs: tuple[str, ...] = ()
        if "dsp_arch_types" in op:
            dsp_archs = self.unique_list(op["dsp_arch_types"], f"{path}.dsp_arch_types", self.dsp_arch)
        if "DSP" in core_types and not dsp_archs:
            raise UsageError(
                f"{path}.dsp_arch_types: required when core_types includes DSP "
                f"(known: {_known(self.dsp_archs)})"
            )
        if dsp_archs and "DSP" not in core_types:
            log.warning("%s.dsp_arch_types is ignored: core_types does not include DSP", path)
            dsp_archs = ()
        inputs = self.tensors(op["inputs"], f"{path}.inputs", core_types, "input")
        outputs = self.tensors(op["outputs"], f"{path}.outputs", core_types, "output")
        scalar_params = tuple(
            self.scalar_param(v, f"{path}.scalar_params[{i}]")
            for i, v in enumerate(self.list_(op.get("scalar_params", []), f"{path}.scalar_params"))
        )
        tensor_params = tuple(
            self.tensor_param(v, f"{path}.tensor_params[{i}]")
            for i, v in enumerate(self.list_(op.get("tensor_params", []), f"{path}.tensor_params"))
        )
        seen: dict[str, str] = {}
        for p in scalar_params + tensor_params:
            if p.name in seen:
                raise UsageError(f"{p.path}.name: parameter '{p.name}' is already defined at {seen[p.name]}")
            seen[p.name] = p.path
        return UdoOperator(
            type=op_type,
            inputs=inputs,
            outputs=outputs,
            scalar_params=scalar_params,
            tensor_params=tensor_params,
            core_types=core_types,
            dsp_arch_types=dsp_archs,
            path=path,
        )

    def tensors(self, value: Any, path: str, core_types: tuple[str, ...], what: str) -> tuple[UdoTensor, ...]:
        items = self.list_(value, path)
        if not items:
            raise UsageError(f"{path}: an operator needs at least one {what}")
        tensors = tuple(
            self.tensor(v, f"{path}[{i}]", core_types, f"{what}_{i}") for i, v in enumerate(items)
        )
        for t in tensors[:-1]:
            if t.repeated:
                raise UsageError(f"{t.path}.repeated: only the last {what} may repeat")
        return tensors

    def tensor(self, value: Any, path: str, core_types: tuple[str, ...], default_name: str) -> UdoTensor:
        t = self.obj(value, path, TENSOR_FIELDS)
        name = self.str_(t.get("name", ""), f"{path}.name") or default_name
        if "data_type" in t and "per_core_data_types" in t:
            raise UsageError(f"{path}: give data_type or per_core_data_types, not both")
        if "data_type" in t:
            data_type = self.data_type(t["data_type"], f"{path}.data_type")
            data_types = {c: data_type for c in core_types}
        elif "per_core_data_types" in t:
            data_types = self.per_core_data_types(t["per_core_data_types"], f"{path}.per_core_data_types")
            for c in core_types:
                if c not in data_types:
                    raise UsageError(
                        f"{path}.per_core_data_types: no data type for core type {c}, "
                        "which the operator's core_types name"
                    )
            extra = [c for c in data_types if c not in core_types]
            if extra:
                log.warning(
                    "%s.per_core_data_types: %s ignored (not in the operator's core_types)",
                    path,
                    ", ".join(extra),
                )
            data_types = {c: data_types[c] for c in core_types}
        else:
            raise UsageError(f"{path}: needs data_type or per_core_data_types")
        return UdoTensor(
            name=name,
            data_types=data_types,
            path=path,
            static=self.bool_(t.get("static", False), f"{path}.static"),
            layout=self.choice(
                t.get("tensor_layout", "NHWC"), f"{path}.tensor_layout", TENSOR_LAYOUTS, "tensor layout"
            ),
            quantization_mode=self.choice(
                t.get("quantization_mode", "TF"),
                f"{path}.quantization_mode",
                QUANTIZATION_MODES,
                "quantization mode",
            ),
            dims=self.dims(t["dims"], f"{path}.dims") if "dims" in t else None,
            default_value=self.default(t, path),
            repeated=self.bool_(t.get("repeated", False), f"{path}.repeated"),
        )

    def per_core_data_types(self, value: Any, path: str) -> dict[str, str]:
        if not isinstance(value, dict):
            raise UsageError(f"{path}: expected an object of core type -> data type, got {_kind(value)}")
        out: dict[str, str] = {}
        for key, data_type in value.items():
            core = self.choice(key, path, self.core_types, "core type")
            out[core] = self.data_type(data_type, f"{path}.{key}")
        return out

    def param_name(self, p: dict[str, Any], path: str) -> str:
        if "name" not in p:
            raise UsageError(f"{path}.name: required (the name of the ONNX node's attribute)")
        name = self.str_(p["name"], f"{path}.name")
        if not name:
            raise UsageError(f"{path}.name: must not be empty")
        return name

    def scalar_param(self, value: Any, path: str) -> UdoParam:
        p = self.obj(value, path, SCALAR_PARAM_FIELDS)
        name = self.param_name(p, path)
        if "data_type" not in p:
            raise UsageError(f"{path}.data_type: required")
        data_type = self.data_type(p["data_type"], f"{path}.data_type")
        default = p.get("default_value")
        if default is not None:
            wants_string = data_type == "STRING"
            ok = isinstance(default, str) if wants_string else isinstance(default, (int, float))
            if not ok:
                raise UsageError(
                    f"{path}.default_value: expected {'a string' if wants_string else 'a number'} "
                    f"({data_type} parameter), got {_kind(default)}"
                )
        return UdoParam(name=name, kind="scalar", data_type=data_type, path=path, default_value=default)

    def tensor_param(self, value: Any, path: str) -> UdoParam:
        p = self.obj(value, path, TENSOR_PARAM_FIELDS)
        name = self.param_name(p, path)
        if "data_type" not in p:
            raise UsageError(f"{path}.data_type: required")
        data_type = self.data_type(p["data_type"], f"{path}.data_type")
        if "static" in p:
            self.bool_(p["static"], f"{path}.static")
        if "quantization_mode" in p:
            self.choice(
                p["quantization_mode"], f"{path}.quantization_mode", QUANTIZATION_MODES, "quantization mode"
            )
        return UdoParam(
            name=name,
            kind="tensor",
            data_type=data_type,
            path=path,
            layout=self.choice(
                p.get("tensor_layout", "NHWC"), f"{path}.tensor_layout", TENSOR_LAYOUTS, "tensor layout"
            ),
            dims=self.dims(p["dims"], f"{path}.dims") if "dims" in p else None,
            default_value=self.default(p, path),
        )

    def default(self, obj: dict[str, Any], path: str) -> Any:
        key = "default_value" if "default_value" in obj else "data"
        return self.values(obj.get(key), f"{path}.{key}")

    def values(self, value: Any, path: str) -> Any:
        """A default value: a number, a string, or a (nested) list of numbers."""
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, list):
                    self.values(v, f"{path}[{i}]")
                elif isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise UsageError(f"{path}[{i}]: expected a number, got {_kind(v)}")
            return value
        raise UsageError(f"{path}: expected a number, a string or a list of numbers, got {_kind(value)}")
