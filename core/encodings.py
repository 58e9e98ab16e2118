"""Encodings of a model's tensors, and AIMET/QAIRT encodings files (formats 0.6.1 and 1.0.0).

The container stores an :class:`EncodingSet` as ``encodings.json`` (quantizer output) and
``overrides.json`` (encodings imported by ``convert`` from QDQ pairs or an overrides file).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from opendlc.errors import UsageError
from opendlc.schemas import Encoding

FORMAT = "opendlc-encodings"
FORMAT_VERSION = 1

Kind = Literal["activation", "param"]


@dataclass
class TensorEncoding:
    """The encoding of one tensor: one :class:`Encoding`, or one per channel along ``axis``."""

    name: str
    kind: Kind
    encodings: list[Encoding] = field(default_factory=list)
    axis: int | None = None
    dtype: Literal["int", "float"] = "int"
    float_bitwidth: int | None = None  # for dtype "float"
    source: str = "calibration"  # calibration | qdq | overrides | propagated | constraint

    @property
    def bitwidth(self) -> int:
        return (self.float_bitwidth or 32) if self.dtype == "float" else self.encodings[0].bitwidth

    @property
    def per_channel(self) -> bool:
        return len(self.encodings) > 1 or self.axis is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dtype": self.dtype,
            "float_bitwidth": self.float_bitwidth,
            "axis": self.axis,
            "source": self.source,
            "encodings": [e.__dict__ for e in self.encodings],
        }

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> TensorEncoding:
        return cls(
            name=name,
            kind=d["kind"],
            encodings=[Encoding(**e) for e in d["encodings"]],
            axis=d.get("axis"),
            dtype=d.get("dtype", "int"),
            float_bitwidth=d.get("float_bitwidth"),
            source=d.get("source", "calibration"),
        )


@dataclass
class EncodingSet:
    """Encodings by tensor name, plus free-form metadata (the options that produced them)."""

    tensors: dict[str, TensorEncoding] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> TensorEncoding:
        return self.tensors[name]

    def add(self, enc: TensorEncoding) -> None:
        self.tensors[enc.name] = enc

    def of_kind(self, kind: Kind) -> list[TensorEncoding]:
        return [t for t in self.tensors.values() if t.kind == kind]

    # ---- our own format ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "meta": self.meta,
            "tensors": {n: t.to_json() for n, t in self.tensors.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EncodingSet:
        if d.get("format") != FORMAT:
            raise UsageError("encodings are not in opendlc's format")
        if d.get("version", 0) > FORMAT_VERSION:
            raise UsageError(f"encodings format version {d.get('version')} is newer than this opendlc reads")
        return cls({n: TensorEncoding.from_json(n, t) for n, t in d["tensors"].items()}, d.get("meta", {}))

    # ---- AIMET / QAIRT encodings files --------------------------------------------------------
    def to_aimet(self, version: str = "1.0.0") -> dict[str, Any]:
        """This set as an AIMET encodings file, which QAIRT reads as quantization overrides."""
        if version == "0.6.1":
            out: dict[str, Any] = {"version": "0.6.1", "activation_encodings": {}, "param_encodings": {}}
            for t in self.tensors.values():
                out[f"{t.kind}_encodings"][t.name] = [_aimet061_entry(t, e) for e in (t.encodings or [None])]
            out["quantizer_args"] = _quantizer_args(self.meta)
            return out
        if version == "1.0.0":
            out = {"version": "1.0.0", "activation_encodings": [], "param_encodings": []}
            for t in self.tensors.values():
                out[f"{t.kind}_encodings"].append(_aimet100_entry(t))
            out["quantizer_args"] = _quantizer_args(self.meta)
            return out
        raise UsageError(f"unknown AIMET encodings version '{version}' (known: 0.6.1, 1.0.0)")

    @classmethod
    def from_aimet(
        cls, data: dict[str, Any], *, source: str = "overrides", where: str = "encodings"
    ) -> EncodingSet:
        """Read an AIMET/QAIRT encodings file (0.6.1 dict form or 1.0.0 list form)."""
        if not isinstance(data, dict):
            raise UsageError(f"{where}: not a JSON object")
        out = cls()
        for kind in ("activation", "param"):
            section = data.get(f"{kind}_encodings", {})
            if isinstance(section, dict):
                for name, entries in section.items():
                    if isinstance(entries, dict):
                        entries = [entries]
                    out.add(_from_aimet061(name, kind, entries, source, f"{where}: {kind}_encodings.{name}"))
            elif isinstance(section, list):
                for i, entry in enumerate(section):
                    out.add(_from_aimet100(entry, kind, source, f"{where}: {kind}_encodings[{i}]"))
            else:
                raise UsageError(f"{where}: {kind}_encodings must be an object or a list")
        if not out.tensors:
            raise UsageError(f"{where}: no activation_encodings or param_encodings found")
        return out


def _quantizer_args(meta: dict[str, Any]) -> dict[str, Any]:
    q = meta.get("quantizer", {})
    return {
        "activation_bitwidth": q.get("act_bitwidth", 8),
        "param_bitwidth": q.get("weights_bitwidth", 8),
        "per_channel_quantization": bool(q.get("use_per_channel_quantization", False)),
        "dtype": "int",
        "quant_scheme": q.get("act_quantizer_calibration", "min-max"),
        "is_symmetric": q.get("param_quantizer_schema", "asymmetric") != "asymmetric",
    }


def _aimet061_entry(t: TensorEncoding, e: Encoding | None) -> dict[str, Any]:
    if t.dtype == "float" or e is None:
        return {"bitwidth": t.float_bitwidth or 32, "dtype": "float"}
    return {
        "bitwidth": e.bitwidth,
        "dtype": "int",
        "is_symmetric": str(e.is_symmetric),
        "max": e.max,
        "min": e.min,
        "offset": e.offset,
        "scale": e.scale,
    }


def _aimet100_entry(t: TensorEncoding) -> dict[str, Any]:
    if t.dtype == "float":
        return {"name": t.name, "dtype": "FLOAT", "bw": t.float_bitwidth or 32, "enc_type": "PER_TENSOR"}
    e0 = t.encodings[0]
    return {
        "name": t.name,
        "dtype": "INT",
        "enc_type": "PER_CHANNEL" if t.per_channel else "PER_TENSOR",
        "bw": e0.bitwidth,
        "is_sym": e0.is_symmetric,
        "scale": [e.scale for e in t.encodings],
        "offset": [e.offset for e in t.encodings],
    }


def _num(entry: dict[str, Any], key: str, where: str) -> float | None:
    v = entry.get(key)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: '{key}' is not a number ({v!r})") from None
    if not math.isfinite(f):
        raise UsageError(f"{where}: '{key}' is not finite ({v!r})")
    return f


def _bitwidth(entry: dict[str, Any], key: str, where: str) -> int:
    bw = entry.get(key)
    if not isinstance(bw, int) or bw not in (4, 8, 16, 32):
        raise UsageError(f"{where}: unsupported bitwidth {bw!r} (supported: 4, 8, 16, 32)")
    return bw


def _truthy(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.strip().lower() == "true")


def _make_encoding(
    bw: int,
    scale: float | None,
    offset: float | None,
    lo: float | None,
    hi: float | None,
    symmetric: bool,
    where: str,
) -> Encoding:
    steps = 2**bw - 1
    if scale is None:
        if lo is None or hi is None:
            raise UsageError(f"{where}: needs scale/offset or min/max")
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        scale = (hi - lo) / steps if hi > lo else 1e-8
        offset = round(lo / scale)
    if scale <= 0:
        raise UsageError(f"{where}: scale must be positive ({scale})")
    offset = int(round(offset or 0))
    if symmetric and offset != 0:
        # QNN's unsigned storage of a symmetric encoding (offset -2^(b-1)); keep it as given.
        return Encoding(bw, scale, offset, offset * scale, (offset + steps) * scale, True, False)
    if symmetric:
        return Encoding(bw, scale, 0, -(2 ** (bw - 1)) * scale, (2 ** (bw - 1) - 1) * scale, True, True)
    return Encoding(bw, scale, offset, offset * scale, (offset + steps) * scale, False, False)


def _from_aimet061(name: str, kind: Kind, entries: list[Any], source: str, where: str) -> TensorEncoding:
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise UsageError(f"{where}: expected a list of encoding objects")
    if str(entries[0].get("dtype", "int")).lower() == "float":
        return TensorEncoding(name, kind, [], None, "float", _bitwidth(entries[0], "bitwidth", where), source)
    encs = []
    for e in entries:
        bw = _bitwidth(e, "bitwidth", where)
        encs.append(
            _make_encoding(
                bw,
                _num(e, "scale", where),
                _num(e, "offset", where),
                _num(e, "min", where),
                _num(e, "max", where),
                _truthy(e.get("is_symmetric", False)),
                where,
            )
        )
    return TensorEncoding(name, kind, encs, None, "int", None, source)


def _from_aimet100(entry: Any, kind: Kind, source: str, where: str) -> TensorEncoding:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise UsageError(f"{where}: expected an object with a 'name'")
    name = entry["name"]
    if str(entry.get("dtype", "INT")).upper() == "FLOAT":
        return TensorEncoding(name, kind, [], None, "float", _bitwidth(entry, "bw", where), source)
    bw = _bitwidth(entry, "bw", where)
    scales = entry.get("scale")
    offsets = entry.get("offset", [0] * len(scales) if isinstance(scales, list) else None)
    if (
        not isinstance(scales, list)
        or not isinstance(offsets, list)
        or len(scales) != len(offsets)
        or not scales
    ):
        raise UsageError(f"{where}: 'scale' and 'offset' must be lists of the same non-zero length")
    sym = _truthy(entry.get("is_sym", False))
    encs = [
        _make_encoding(
            bw,
            _num({"scale": s}, "scale", where),
            _num({"offset": o}, "offset", where),
            None,
            None,
            sym,
            where,
        )
        for s, o in zip(scales, offsets, strict=True)
    ]
    per_channel = str(entry.get("enc_type", "PER_TENSOR")).upper() == "PER_CHANNEL"
    return TensorEncoding(name, kind, encs, 0 if per_channel else None, "int", None, source)


def load_encodings_file(path: str) -> EncodingSet:
    """Read an AIMET/QAIRT encodings (quantization overrides) file, with one-line errors."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such encodings file") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    return EncodingSet.from_aimet(data, where=path)
