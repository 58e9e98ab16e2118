"""The opendlc ``.dlc`` container: a versioned zip around an ONNX model (specified in docs/container.md).

Members: ``manifest.json`` (always first), ``model.onnx`` (+ ``model.onnx.data`` for models over 2 GB),
``encodings.json`` once quantized, ``overrides.json`` when ``convert`` imported encodings, and
``records/<id>.bin`` cache records once prepared.  Anywhere a container is read, a plain ``.onnx`` is
read too.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper

from opendlc import __version__
from opendlc.atomic import atomic_path
from opendlc.encodings import EncodingSet
from opendlc.errors import OpendlcError, UsageError

FORMAT_NAME = "opendlc"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.onnx"
MODEL_DATA = "model.onnx.data"
ENCODINGS = "encodings.json"
OVERRIDES = "overrides.json"
# Protobuf cannot serialize a message over 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

log = logging.getLogger("opendlc.container")
DEBUG2 = logging.DEBUG - 1  # the level of --debug2 (opendlc.cli.logging_options)


class ContainerError(OpendlcError):
    pass


@dataclass
class CacheRecord:
    """A prepared graph for one target: the bytes and what the manifest says about them."""

    id: str
    info: dict[str, Any]
    data: bytes

    @property
    def member(self) -> str:
        return f"records/{self.id}.bin"


@dataclass
class Container:
    """A model and what opendlc has added to it."""

    model: onnx.ModelProto
    encodings: EncodingSet | None = None
    overrides: EncodingSet | None = None
    records: list[CacheRecord] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # free-form, kept in the manifest
    path: Path | None = None  # where it was read from

    @property
    def quantized(self) -> bool:
        return self.encodings is not None

    # ---- writing ------------------------------------------------------------------------------
    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the container atomically (nothing is left at ``path`` if this fails)."""
        members = self._members()
        manifest = self._manifest(members)
        with atomic_path(path) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as z:
                z.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
                for name, data in members.items():
                    z.writestr(name, data)
                    log.log(DEBUG2, "%s: member %s, %d bytes", path, name, len(data))
        log.debug("%s: wrote %s", path, ", ".join(f"{n} ({len(d)} bytes)" for n, d in members.items()))

    def _members(self) -> dict[str, bytes]:
        members = dict(_serialize_model(self.model))
        if self.encodings is not None:
            members[ENCODINGS] = json.dumps(self.encodings.to_json(), indent=1).encode()
        if self.overrides is not None:
            members[OVERRIDES] = json.dumps(self.overrides.to_json(), indent=1).encode()
        for rec in self.records:
            members[rec.member] = rec.data
        return members

    def _manifest(self, members: dict[str, bytes]) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "producer": f"opendlc {__version__}",
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "graph": graph_io(self.model),
            "quantized": self.quantized,
            "members": {
                n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in members.items()
            },
            "records": [{"id": r.id, "member": r.member, **r.info} for r in self.records],
            "meta": self.meta,
        }


def _serialize_model(model: onnx.ModelProto) -> list[tuple[str, bytes]]:
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    if weights < EXTERNAL_DATA_THRESHOLD:
        return [(MODEL, model.SerializeToString())]
    with tempfile.TemporaryDirectory() as d:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        external_data_helper.convert_model_to_external_data(
            copy, all_tensors_to_one_file=True, location=MODEL_DATA
        )
        onnx.save_model(copy, os.path.join(d, MODEL))
        return [(MODEL, Path(d, MODEL).read_bytes()), (MODEL_DATA, Path(d, MODEL_DATA).read_bytes())]


def graph_io(model: onnx.ModelProto) -> dict[str, Any]:
    """Names, shapes and element types of the graph's inputs and outputs."""
    inits = {i.name for i in model.graph.initializer}

    def describe(v: onnx.ValueInfoProto) -> dict[str, Any]:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else None
        return {"name": v.name, "shape": shape, "dtype": dtype}

    return {
        "name": model.graph.name,
        "inputs": [describe(v) for v in model.graph.input if v.name not in inits],
        "outputs": [describe(v) for v in model.graph.output],
    }


# ---- reading --------------------------------------------------------------------------------------
def load(path: str | os.PathLike[str], *, check: bool = True) -> Container:
    """Read a ``.dlc`` container or a plain ``.onnx`` model, verifying what can be verified."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a model")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"PK":
        return _load_zip(path, check=check)
    if path.suffix.lower() == ".dlc":
        raise ContainerError(f"{path}: not a container (not a zip file)")
    return Container(model=_load_onnx_file(path, check=check), path=path)


def _load_onnx_file(path: Path, *, check: bool) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends
        raise ContainerError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise ContainerError(f"{path}: not an ONNX model (empty graph)")
    if check:
        check_model(model, str(path))
    return model


def check_model(model: onnx.ModelProto, where: str) -> None:
    try:
        if model.ByteSize() < EXTERNAL_DATA_THRESHOLD:
            onnx.checker.check_model(model)
    except Exception as e:  # ValidationError, and the schema errors some invalid models raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ContainerError(f"{where}: ONNX model fails onnx.checker: {first}") from None


def _load_zip(path: Path, *, check: bool) -> Container:
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ContainerError(f"{path}: corrupt or truncated container (not a readable zip)") from None
    with z:
        names = set(z.namelist())
        if MANIFEST not in names:
            if {"model", "model.params"} <= names or "dlc.metadata" in names:
                raise ContainerError(
                    f"{path}: this is a QAIRT/SNPE-produced DLC; opendlc cannot read Qualcomm's proprietary "
                    "format -- convert the source ONNX model with 'opendlc convert' instead"
                )
            raise ContainerError(f"{path}: not an opendlc container (no {MANIFEST})")
        manifest = _json_member(z, MANIFEST, path)
        if manifest.get("format") != FORMAT_NAME:
            raise ContainerError(f"{path}: unknown container format {manifest.get('format')!r}")
        version = manifest.get("format_version")
        if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
            raise ContainerError(
                f"{path}: unknown container format version {version!r} "
                f"(this opendlc reads 1..{FORMAT_VERSION})"
            )
        listed = manifest.get("members")
        if not isinstance(listed, dict) or not all(isinstance(v, dict) for v in listed.values()):
            raise ContainerError(f"{path}: {MANIFEST} is malformed ('members' is not a table of members)")
        if MODEL not in listed or MODEL not in names:
            raise ContainerError(f"{path}: container has no {MODEL}")
        data: dict[str, bytes] = {}
        for name, info in listed.items():
            if name not in names:
                raise ContainerError(f"{path}: member {name} is listed in the manifest but missing")
            try:
                blob = z.read(name)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
                raise ContainerError(f"{path}: member {name} is corrupt ({e})") from None
            if len(blob) != info.get("size") or hashlib.sha256(blob).hexdigest() != info.get("sha256"):
                raise ContainerError(f"{path}: checksum mismatch in member {name}")
            data[name] = blob
            log.log(DEBUG2, "%s: member %s, %d bytes, sha256 verified", path, name, len(blob))
    log.debug("%s: format version %s, %d members verified", path, version, len(data))
    model = _parse_model(data, path, check=check)
    meta = manifest.get("meta", {})
    container = Container(model=model, path=path, meta=meta if isinstance(meta, dict) else {})
    if ENCODINGS in data:
        container.encodings = _encodings_member(data[ENCODINGS], ENCODINGS, path)
    if OVERRIDES in data:
        container.overrides = _encodings_member(data[OVERRIDES], OVERRIDES, path)
    records = manifest.get("records", [])
    if not isinstance(records, list):
        raise ContainerError(f"{path}: {MANIFEST} is malformed ('records' is not a list)")
    for rec in records:
        if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
            raise ContainerError(f"{path}: {MANIFEST} is malformed (a cache record has no 'id')")
        if rec.get("member") not in data:
            raise ContainerError(f"{path}: cache record {rec['id']} has no data member")
        info = {k: v for k, v in rec.items() if k not in ("id", "member")}
        container.records.append(CacheRecord(rec["id"], info, data[rec["member"]]))
    return container


def _encodings_member(blob: bytes, name: str, path: Path) -> EncodingSet:
    try:
        return EncodingSet.from_json(json.loads(blob))
    except OpendlcError as e:
        raise ContainerError(f"{path}: {name}: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ContainerError(f"{path}: {name} is malformed ({type(e).__name__}: {e})") from None


def _json_member(z: zipfile.ZipFile, name: str, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(z.read(name))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
        raise ContainerError(f"{path}: {name} is corrupt ({type(e).__name__})") from None
    if not isinstance(value, dict):
        raise ContainerError(f"{path}: {name} is not a JSON object")
    return value


def _parse_model(data: dict[str, bytes], path: Path, *, check: bool) -> onnx.ModelProto:
    try:
        if MODEL_DATA in data:
            with tempfile.TemporaryDirectory() as d:
                for n in (MODEL, MODEL_DATA):
                    Path(d, n).write_bytes(data[n])
                model = onnx.load(os.path.join(d, MODEL))
        else:
            model = onnx.load_model_from_string(data[MODEL])
    except Exception as e:
        raise ContainerError(f"{path}: {MODEL} is not a readable ONNX model ({type(e).__name__})") from None
    if check:
        check_model(model, f"{path}: {MODEL}")
    return model


# ---- facts about a model ---------------------------------------------------------------------------
def parameter_summary(model: onnx.ModelProto) -> tuple[int, int]:
    """(number of parameter values, bytes) in initializers and Constant nodes."""
    count = nbytes = 0
    tensors = list(model.graph.initializer)
    tensors += [
        a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    ]
    for t in tensors:
        n = int(np.prod(t.dims)) if t.dims else 1
        count += n
        nbytes += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return count, nbytes


def model_bytes(model: onnx.ModelProto) -> bytes:
    buf = io.BytesIO()
    onnx.save_model(model, buf)
    return buf.getvalue()
