"""Running a model's user-defined ops on the host while it is calibrated.

``prepare_session(model, package_paths, session_options)`` returns a copy of ``model`` in which every
node that belongs to one of the given UDO packages is re-domained to ``ai.onnx.contrib`` and given an
op type that onnxruntime-extensions runs as a Python op; that op calls the package's host CPU library
(``libUdo<Package>ImplCpu.so``, built with ``make cpu_x86``) through ctypes, with the C types of the
package's ``include/OdlcUdo.h``.  Everything else stays with onnxruntime.  See docs/udo.md.

A node belongs to a package when its op type is one of the package's operators and its domain is the
package's name, or a domain onnxruntime does not know itself (a standard ``Softmax`` stays standard).
Node attributes are the operators' ``scalar_params``/``tensor_params``.

onnxruntime-extensions aborts the process when a Python op raises, so a failing kernel does not raise:
it logs its message (logger ``opendlc.udo``), records it (:func:`recorded_errors`), returns zeros and a
status code, and a ``Gather`` node added after it turns a non-zero status into an onnxruntime error whose
node name says which UDO failed.  :func:`error_from_exception` turns that error back into the kernel's
own message.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from opendlc.errors import OpendlcError, UsageError
from opendlc.udo_gen import abi
from opendlc.udo_gen.config import DATA_TYPES, HOST_NUMPY_TYPES, UdoOperator, UdoPackage, parse_config

log = logging.getLogger("opendlc.udo")

CONTRIB_DOMAIN = "ai.onnx.contrib"  # the domain onnxruntime-extensions runs Python ops in
PARAMS_ATTRIBUTE = "opendlc_udo"  # the one attribute a rewritten node carries (JSON)
GUARD_MARKER = "opendlc UDO"  # starts the name of every guard node
# Domains whose ops onnxruntime implements itself: a node there is never taken for a UDO.
ORT_DOMAINS = frozenset(
    {
        "",
        "ai.onnx",
        "ai.onnx.ml",
        "ai.onnx.training",
        "ai.onnx.preview.training",
        "com.microsoft",
        "com.microsoft.nchwc",
        "com.microsoft.experimental",
        "com.ms.internal.nhwc",
        CONTRIB_DOMAIN,
    }
)
_LIBRARY_NAME = re.compile(r"libUdo(?P<package>[A-Za-z_][A-Za-z0-9_]*?)(?P<kind>Reg|ImplCpu)\.so")


# The C structs of OdlcUdo.h ----------------------------------------------------------------------
class _Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dims", ctypes.c_int64 * abi.MAX_RANK),
        ("rank", ctypes.c_uint32),
        ("data_type", ctypes.c_int32),
        ("scale", ctypes.c_float),
        ("offset", ctypes.c_int32),
    ]


class _Param(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("kind", ctypes.c_int32),
        ("data_type", ctypes.c_int32),
        ("real", ctypes.c_double),
        ("integer", ctypes.c_int64),
        ("string", ctypes.c_char_p),
        ("tensor", _Tensor),
    ]


class _OpArgs(ctypes.Structure):
    _fields_ = [
        ("inputs", ctypes.POINTER(_Tensor)),
        ("num_inputs", ctypes.c_uint32),
        ("params", ctypes.POINTER(_Param)),
        ("num_params", ctypes.c_uint32),
    ]


_OP_FUNCTION = [
    ctypes.c_char_p,
    ctypes.POINTER(_OpArgs),
    ctypes.POINTER(_Tensor),
    ctypes.c_uint32,
    ctypes.c_char_p,
    ctypes.c_size_t,
]


def _fill_tensor(struct: _Tensor, array: np.ndarray, data_type: str) -> None:
    struct.data = array.ctypes.data if array.size else None
    struct.rank = array.ndim
    for i, d in enumerate(array.shape):
        struct.dims[i] = d
    struct.data_type = abi_data_type(data_type)
    struct.scale = 0.0
    struct.offset = 0


def abi_data_type(name: str) -> int:
    return DATA_TYPES[name]


# Loading packages --------------------------------------------------------------------------------
@dataclass
class HostPackage:
    """A UDO package's host libraries, loaded."""

    name: str
    package: UdoPackage
    registration_library: Path
    implementation_library: Path
    key: str  # identifies this build of the libraries
    _infer: Any
    _execute: Any

    def operator(self, op_type: str) -> UdoOperator | None:
        return next((op for op in self.package.operators if op.type == op_type), None)

    def run(
        self, op: UdoOperator, inputs: Sequence[np.ndarray], params: _Params, num_outputs: int
    ) -> tuple[list[np.ndarray] | None, int, str]:
        """Infer the output shapes, allocate, execute; return (outputs, status, message)."""
        in_structs = (_Tensor * max(len(inputs), 1))()
        kept: list[np.ndarray] = []
        for i, x in enumerate(inputs):
            expected = _tensor_at(op.inputs, i).data_type("CPU")
            x = np.ascontiguousarray(x, dtype=HOST_NUMPY_TYPES[expected])
            if x.ndim > abi.MAX_RANK:
                return (
                    None,
                    abi.STATUS["ERR_INVALID_ARGUMENT"],
                    f"input {i} has rank {x.ndim} (at most {abi.MAX_RANK})",
                )
            kept.append(x)
            _fill_tensor(in_structs[i], x, expected)
        args = _OpArgs(in_structs, len(inputs), params.array, params.count)
        out_structs = (_Tensor * num_outputs)()
        out_types = [_tensor_at(op.outputs, i).data_type("CPU") for i in range(num_outputs)]
        for i, t in enumerate(out_types):
            out_structs[i].data_type = abi_data_type(t)
        error = ctypes.create_string_buffer(abi.ERROR_CAPACITY)
        op_type = op.type.encode()
        status = self._infer(op_type, ctypes.byref(args), out_structs, num_outputs, error, abi.ERROR_CAPACITY)
        if status != abi.STATUS["OK"]:
            return None, status, _message(error, "shape inference failed")
        outputs: list[np.ndarray] = []
        for i, t in enumerate(out_types):
            rank = out_structs[i].rank
            dims = [out_structs[i].dims[d] for d in range(min(rank, abi.MAX_RANK))]
            if rank > abi.MAX_RANK or any(d < 0 for d in dims):
                return None, abi.STATUS["ERR_RUNTIME"], f"shape inference gave output {i} the shape {dims}"
            array = np.zeros(dims, dtype=HOST_NUMPY_TYPES[t])
            outputs.append(array)
            _fill_tensor(out_structs[i], array, t)
        status = self._execute(
            op_type, ctypes.byref(args), out_structs, num_outputs, error, abi.ERROR_CAPACITY
        )
        if status != abi.STATUS["OK"]:
            return outputs, status, _message(error, "execution failed")
        return outputs, status, ""


def _message(error: ctypes.Array, fallback: str) -> str:
    text = error.value.decode("utf-8", errors="replace").strip()
    return text or f"{fallback} (the library gave no message)"


def _tensor_at(tensors: Sequence[Any], index: int) -> Any:
    return tensors[index] if index < len(tensors) else tensors[-1]  # a repeating last tensor


_loaded: dict[tuple[str, int, int, int], HostPackage] = {}
_loaded_paths: dict[str, tuple[int, int, int]] = {}
_copies_dir: Path | None = None


def load_host_package(entry: str | os.PathLike[str]) -> HostPackage:
    """Load the host libraries of the package at ``entry``: its folder, its registration library or its
    CPU implementation library (``libUdo<Package>Reg.so`` / ``libUdo<Package>ImplCpu.so``)."""
    registration = _registration_library(str(entry))
    name = _LIBRARY_NAME.fullmatch(registration.name)["package"]  # type: ignore[index]
    reg = _open(registration)
    version = _call(reg, abi.symbol(name, "abi_version"), ctypes.c_uint32, [], registration)()
    if version != abi.ABI_VERSION:
        raise UsageError(
            f"{registration}: built for UDO ABI version {version}, this opendlc reads version "
            f"{abi.ABI_VERSION}: regenerate the package with -f and rebuild it"
        )
    config_text = _call(reg, abi.symbol(name, "package_config"), ctypes.c_char_p, [], registration)()
    try:
        raw = json.loads((config_text or b"").decode("utf-8"))
        (package,) = parse_config({name: raw}, config_name=registration.name)
    except (ValueError, UsageError) as e:
        raise UsageError(f"{registration}: the package description it carries is not valid: {e}") from None
    impl_name = _call(
        reg, abi.symbol(name, "implementation_library"), ctypes.c_char_p, [ctypes.c_char_p], registration
    )(b"CPU")
    if not impl_name:
        raise UsageError(
            f"{registration}: package {name} has no CPU implementation, and calibration runs "
            "user-defined ops with their host CPU implementation (add CPU to the operators' core_types)"
        )
    implementation = registration.parent / impl_name.decode()
    if not implementation.is_file():
        raise UsageError(f"{implementation}: not built (run: make -C {_package_root(registration)} cpu_x86)")
    identity = _identity(implementation)
    cached = _loaded.get(identity)
    if cached is not None:
        return cached
    impl = _open(implementation)
    version = _call(impl, abi.symbol(name, "abi_version"), ctypes.c_uint32, [], implementation)()
    if version != abi.ABI_VERSION:
        raise UsageError(
            f"{implementation}: built for UDO ABI version {version}, this opendlc reads version "
            f"{abi.ABI_VERSION}: regenerate the package with -f and rebuild it"
        )
    host = HostPackage(
        name=name,
        package=package,
        registration_library=registration,
        implementation_library=implementation,
        key=hashlib.sha256(repr(identity).encode()).hexdigest()[:10],
        _infer=_call(
            impl, abi.symbol(name, "infer_output_shapes"), ctypes.c_int32, _OP_FUNCTION, implementation
        ),
        _execute=_call(impl, abi.symbol(name, "execute"), ctypes.c_int32, _OP_FUNCTION, implementation),
    )
    _loaded[identity] = host
    return host


def _registration_library(entry: str) -> Path:
    path = Path(entry)
    if not path.exists() and ":" in entry:  # --op_package_lib takes LIBRARY:INTERFACE_PROVIDER
        head = entry.rsplit(":", 1)[0]
        if Path(head).exists():
            path = Path(head)
    if path.is_dir():
        libs = sorted((path / abi.HOST_LIB_DIR).glob("libUdo*Reg.so"))
        if len(libs) == 1:
            return libs[0]
        if len(libs) > 1:
            raise UsageError(
                f"{entry}: several registration libraries in {abi.HOST_LIB_DIR}; give one of them"
            )
        if (path / "Makefile").is_file() and (path / "config").is_dir():
            raise UsageError(
                f"{entry}: the package's host libraries are not built (run: make -C {path} cpu_x86)"
            )
        raise UsageError(
            f"{entry}: not a UDO package folder (no {abi.HOST_LIB_DIR}/libUdo<Package>Reg.so in it)"
        )
    if not path.is_file():
        raise UsageError(f"{entry}: no such UDO package or library")
    match = _LIBRARY_NAME.fullmatch(path.name)
    if match is None:
        raise UsageError(
            f"{entry}: expected a UDO package folder, its libUdo<Package>Reg.so "
            "or its libUdo<Package>ImplCpu.so"
        )
    registration = path.parent / abi.registration_library(match["package"])
    if not registration.is_file():
        raise UsageError(
            f"{registration}: not found beside {path.name} (run: make -C {_package_root(path)} cpu_x86)"
        )
    return registration


def _package_root(library: Path) -> Path:
    return library.parent.parent.parent  # <root>/libs/x86-64_linux_clang/<lib>


def _identity(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)


def _open(path: Path) -> ctypes.CDLL:
    """dlopen ``path``; a rebuilt library at a path already loaded is loaded from a copy, since dlopen
    would hand back the old one."""
    global _copies_dir
    identity = _identity(path)
    key = identity[0]
    target = path
    if key in _loaded_paths and _loaded_paths[key] != identity[1:]:
        if _copies_dir is None:
            _copies_dir = Path(tempfile.mkdtemp(prefix="opendlc-udo-"))
            atexit.register(shutil.rmtree, _copies_dir, True)
        target = _copies_dir / f"{hashlib.sha256(repr(identity).encode()).hexdigest()[:12]}-{path.name}"
        shutil.copy2(path, target)
    else:
        _loaded_paths[key] = identity[1:]
    try:
        return ctypes.CDLL(str(target))
    except OSError as e:
        raise UsageError(f"{path}: cannot load the library ({e})") from None


def _call(lib: ctypes.CDLL, name: str, restype: Any, argtypes: list[Any], path: Path) -> Any:
    try:
        function = getattr(lib, name)
    except AttributeError:
        raise UsageError(
            f"{path}: has no function {name}: not a library of an opendlc UDO package of that name"
        ) from None
    function.restype = restype
    function.argtypes = argtypes
    return function


# Parameters --------------------------------------------------------------------------------------
class _Params:
    """The C array of a node's parameters, with the buffers it points into."""

    def __init__(self, params: list[dict[str, Any]]) -> None:
        self.count = len(params)
        self.array = (_Param * max(self.count, 1))()
        self._keep: list[Any] = []
        kinds = abi.PARAM_KINDS
        for struct, p in zip(self.array, params, strict=False):
            name = p["name"].encode()
            self._keep.append(name)
            struct.name = name
            struct.kind = kinds[p["kind"]]
            struct.data_type = abi_data_type(p["data_type"])
            if p["kind"] == "string":
                value = p["value"].encode()
                self._keep.append(value)
                struct.string = value
            elif p["kind"] == "scalar":
                struct.real = float(p["value"])
                struct.integer = int(p["value"]) if float(p["value"]).is_integer() else 0
            else:
                array = np.frombuffer(base64.b64decode(p["data"]), dtype=HOST_NUMPY_TYPES[p["data_type"]])
                array = array.reshape(p["shape"]).copy()
                self._keep.append(array)
                _fill_tensor(struct.tensor, array, p["data_type"])


@lru_cache(maxsize=256)
def _decode_attribute(text: str) -> tuple[str, _Params]:
    data = json.loads(text)
    return data["node"], _Params(data["params"])


def _node_params(
    node: onnx.NodeProto, host: HostPackage, op: UdoOperator, where: str
) -> list[dict[str, Any]]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    known = [p.name for p in op.params]
    for name in attrs:
        if name not in known:
            raise UsageError(
                f"{where}: attribute '{name}' is not a parameter of {op.type} in UDO package {host.name} "
                f"(parameters: {', '.join(known) or 'none'})"
            )
    out: list[dict[str, Any]] = []
    for p in op.params:
        if p.name in attrs:
            value = attrs[p.name]
        elif p.default_value is not None:
            value = p.default_value
        else:
            raise UsageError(
                f"{where}: attribute '{p.name}' ({p.kind} parameter, {p.data_type}) is missing and "
                f"{p.path} gives no default_value"
            )
        what = f"{where}: attribute '{p.name}'"
        if p.kind == "scalar" and p.data_type == "STRING":
            if isinstance(value, bytes):
                value = value.decode("utf-8", errors="replace")
            if not isinstance(value, str):
                raise UsageError(f"{what}: expected a string (STRING parameter)")
            out.append({"name": p.name, "kind": "string", "data_type": "STRING", "value": value})
        elif p.kind == "scalar":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"{what}: expected a number ({p.data_type} scalar parameter)")
            if not p.data_type.startswith("FLOAT") and not float(value).is_integer():
                raise UsageError(f"{what}: {value} is not an integer ({p.data_type} scalar parameter)")
            out.append({"name": p.name, "kind": "scalar", "data_type": p.data_type, "value": value})
        else:
            if p.data_type not in HOST_NUMPY_TYPES:
                raise UsageError(
                    f"{p.path}.data_type: {p.data_type} tensor parameters cannot be passed on the host"
                )
            if isinstance(value, onnx.TensorProto):
                array = numpy_helper.to_array(value)
            else:
                try:
                    array = np.asarray(value, dtype=np.float64)
                except (TypeError, ValueError):
                    raise UsageError(f"{what}: expected a tensor or a list of numbers") from None
            array = np.ascontiguousarray(array.astype(HOST_NUMPY_TYPES[p.data_type]))
            if p.dims is not None and array.ndim <= 1 and array.size == int(np.prod(p.dims)):
                array = array.reshape(p.dims)
            out.append(
                {
                    "name": p.name,
                    "kind": "tensor",
                    "data_type": p.data_type,
                    "shape": list(array.shape),
                    "data": base64.b64encode(array.tobytes()).decode(),
                }
            )
    return out


# Registering the Python ops ----------------------------------------------------------------------
_registered: set[str] = set()
_announced: set[str] = set()
_errors: list[str] = []


def recorded_errors() -> list[str]:
    """Messages of the UDO kernels that failed in this process, oldest first."""
    return list(_errors)


def error_from_exception(exc: BaseException) -> OpendlcError | None:
    """The UDO failure behind an onnxruntime error raised by a guard node, as an OpendlcError."""
    if GUARD_MARKER not in str(exc) or not _errors:
        return None
    return OpendlcError(_errors[-1])


def _ortx():
    try:
        import onnxruntime_extensions
    except ImportError:
        raise OpendlcError(
            "running user-defined ops needs onnxruntime-extensions (pip install onnxruntime-extensions)"
        ) from None
    return onnxruntime_extensions


def _register_op(host: HostPackage, op: UdoOperator, num_inputs: int, num_outputs: int) -> str:
    """Register (once) the Python op that runs ``op`` with this many tensors; return its op type."""
    op_name = f"{host.name}__{op.type}__{num_inputs}x{num_outputs}__{host.key}"
    if op_name in _registered:
        return op_name
    ortx = _ortx()
    dt = ortx.PyCustomOpDef
    onnx_types = {
        "float32": dt.dt_float,
        "float16": dt.dt_float16,
        "uint8": dt.dt_uint8,
        "uint16": dt.dt_uint16,
        "uint32": dt.dt_uint32,
        "int8": dt.dt_int8,
        "int16": dt.dt_int16,
        "int32": dt.dt_int32,
    }
    in_types = [
        onnx_types[HOST_NUMPY_TYPES[_tensor_at(op.inputs, i).data_type("CPU")]] for i in range(num_inputs)
    ]
    out_types = [
        onnx_types[HOST_NUMPY_TYPES[_tensor_at(op.outputs, i).data_type("CPU")]] for i in range(num_outputs)
    ]
    out_dtypes = [HOST_NUMPY_TYPES[_tensor_at(op.outputs, i).data_type("CPU")] for i in range(num_outputs)]

    def kernel(*inputs: np.ndarray, **attributes: str) -> tuple[np.ndarray, ...]:
        # Never raise here: onnxruntime-extensions would abort the process.  Report through the status.
        node = "?"
        try:
            node, params = _decode_attribute(attributes[PARAMS_ATTRIBUTE])
            outputs, status, message = host.run(op, inputs, params, num_outputs)
        except Exception as e:  # a bug of ours, or a broken library: still a status, not an abort
            outputs, status, message = None, abi.STATUS["ERR_RUNTIME"], f"{type(e).__name__}: {e}"
        if status != abi.STATUS["OK"]:
            library = host.implementation_library.name
            text = f"UDO node '{node}' ({host.name}::{op.type}, {library}) failed: {message}"
            _errors.append(text)
            del _errors[:-100]
            log.error("%s", text)
            if outputs is None:
                outputs = [np.zeros((0,), dtype=t) for t in out_dtypes]
        code = int(status) if status > 0 else (1 if status else 0)  # the guard fails on any code > 0
        return (*outputs, np.array([code], dtype=np.int64))

    ortx.onnx_op(
        op_type=op_name,
        inputs=in_types,
        outputs=[*out_types, dt.dt_int64],
        attrs={PARAMS_ATTRIBUTE: dt.dt_string},
    )(kernel)
    _registered.add(op_name)
    return op_name


# Rewriting the model -----------------------------------------------------------------------------
def split_package_paths(package_paths: Iterable[str] | str | None) -> list[str]:
    """``--udo_package_path`` values, each possibly a comma-separated list, as one list."""
    if package_paths is None:
        return []
    if isinstance(package_paths, (str, os.PathLike)):
        package_paths = [str(package_paths)]
    return [p.strip() for value in package_paths for p in str(value).split(",") if p.strip()]


def prepare_session(
    model: onnx.ModelProto, package_paths: Iterable[str] | str | None, session_options: Any
) -> onnx.ModelProto:
    """Make onnxruntime run ``model``'s UDO nodes with the packages' host CPU libraries.

    Returns the model to give ``onnxruntime.InferenceSession`` together with ``session_options`` (on
    which the onnxruntime-extensions library is registered when a node was rewritten).  ``model`` is
    not modified; tensor names stay as they are.  Call it once per ``SessionOptions``.
    """
    entries = split_package_paths(package_paths)
    if not entries:
        return model
    hosts: dict[str, HostPackage] = {}
    for entry in entries:
        host = load_host_package(entry)
        other = hosts.get(host.name)
        if (
            other is not None
            and other.implementation_library.resolve() != host.implementation_library.resolve()
        ):
            raise UsageError(
                f"UDO package {host.name} is given twice: {other.registration_library} "
                f"and {host.registration_library}"
            )
        hosts[host.name] = host
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rewriter = _Rewriter(list(hosts.values()))
    rewriter.graph(out.graph, "")
    if not rewriter.rewritten:
        log.info("no node of the model belongs to UDO package %s", ", ".join(hosts))
        return out
    if not any(o.domain == CONTRIB_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    out.graph.initializer.append(numpy_helper.from_array(np.zeros(1, dtype=np.int64), rewriter.guard_data))
    session_options.register_custom_ops_library(_ortx().get_library_path())
    counts: dict[str, int] = {}
    for label in rewriter.rewritten:
        counts[label] = counts.get(label, 0) + 1
    summary = ", ".join(f"{n} x {label}" for label, n in sorted(counts.items()))
    # an engine makes several sessions of one model: say it once
    log.log(
        logging.DEBUG if summary in _announced else logging.INFO,
        "running user-defined ops on the host: %s",
        summary,
    )
    _announced.add(summary)
    return out


class _Rewriter:
    def __init__(self, hosts: list[HostPackage]) -> None:
        self.hosts = hosts
        self.by_name = {h.name: h for h in hosts}
        self.rewritten: list[str] = []
        self.guard_data = "opendlc_udo_guard_zero"
        self._uid = 0

    def graph(self, graph: onnx.GraphProto, scope: str) -> None:
        nodes: list[onnx.NodeProto] = []
        for index, node in enumerate(graph.node):
            for attr in node.attribute:  # subgraphs of If/Loop/Scan
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    self.graph(sub, f"{scope}{node.name or node.op_type}/")
            nodes.append(node)
            guard = self.node(node, f"{scope}{node.name or f'#{index} ({node.op_type})'}")
            if guard is not None:
                nodes.append(guard)
        del graph.node[:]
        graph.node.extend(nodes)

    def _match(self, node: onnx.NodeProto, where: str) -> tuple[HostPackage, UdoOperator] | None:
        candidates = [(h, op) for h in self.hosts if (op := h.operator(node.op_type)) is not None]
        own = [c for c in candidates if c[0].name == node.domain]
        if own:
            return own[0]
        if node.domain in self.by_name:
            host = self.by_name[node.domain]
            ops = ", ".join(op.type for op in host.package.operators)
            raise UsageError(
                f"node '{where}': op type '{node.op_type}' is not in UDO package {host.name} (its ops: {ops})"
            )
        if not candidates or node.domain in ORT_DOMAINS:
            return None
        if len(candidates) > 1:
            names = " and ".join(h.name for h, _ in candidates)
            raise UsageError(
                f"node '{where}': op type '{node.op_type}' is in UDO packages {names}; put the node in the "
                "domain of the one meant"
            )
        return candidates[0]

    def node(self, node: onnx.NodeProto, where: str) -> onnx.NodeProto | None:
        match = self._match(node, where)
        if match is None:
            return None
        host, op = match
        if "CPU" not in op.core_types:
            raise UsageError(
                f"node '{where}': {op.type} of UDO package {host.name} has no CPU implementation "
                f"(core_types: {', '.join(op.core_types)}), and calibration runs user-defined ops "
                "on the host CPU"
            )
        for kind, tensors in (("inputs", op.inputs), ("outputs", op.outputs)):
            for t in tensors:
                if t.data_type("CPU") not in HOST_NUMPY_TYPES:
                    raise UsageError(
                        f"{t.path}: CPU data type {t.data_type('CPU')} cannot run on the host "
                        f"(host {kind} may be {', '.join(HOST_NUMPY_TYPES)})"
                    )
        inputs = list(node.input)
        while inputs and not inputs[-1]:
            inputs.pop()
        if "" in inputs:
            raise UsageError(
                f"node '{where}': omitted optional inputs are not supported for user-defined ops"
            )
        num_in, num_out = len(inputs), len(node.output)
        for what, n, tensors in (("inputs", num_in, op.inputs), ("outputs", num_out, op.outputs)):
            repeats = tensors[-1].repeated
            if (n < len(tensors)) if repeats else (n != len(tensors)):
                raise UsageError(
                    f"node '{where}': {n} {what}, but {op.type} of UDO package {host.name} has "
                    f"{'at least ' if repeats else ''}{len(tensors)} ({op.path})"
                )
        params = _node_params(node, host, op, f"node '{where}'")
        op_name = _register_op(host, op, num_in, num_out)
        self._uid += 1
        status = f"opendlc_udo_status_{self._uid}"
        payload = json.dumps({"node": where, "params": params}, sort_keys=True)
        del node.input[:]
        node.input.extend(inputs)
        node.output.append(status)
        del node.attribute[:]
        node.attribute.append(helper.make_attribute(PARAMS_ATTRIBUTE, payload))
        node.op_type = op_name
        node.domain = CONTRIB_DOMAIN
        self.rewritten.append(f"{host.name}::{op.type}")
        return helper.make_node(
            "Gather",
            [self.guard_data, status],
            [f"opendlc_udo_guard_{self._uid}"],
            name=f"{GUARD_MARKER} '{op.type}' of package '{host.name}' failed at node '{where}' "
            "(its message is logged by opendlc.udo; idx is the status code)",
            axis=0,
        )
