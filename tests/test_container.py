"""The .dlc container: round trips, the manifest, and every kind of bad input through the command line."""

from __future__ import annotations

import hashlib
import json
import resource
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from clirun import DIGITS, ok, one_line_error, run
from onnx import TensorProto, helper

from opendlc import container as dlc
from opendlc.encodings import EncodingSet, TensorEncoding
from opendlc.errors import OpendlcError
from opendlc.schemas import Encoding

MODEL = DIGITS / "model.onnx"


def _encodings(source: str) -> EncodingSet:
    enc = EncodingSet(meta={"quantizer": {"act_bitwidth": 8}})
    enc.add(TensorEncoding("relu1", "activation", [Encoding(8, 0.02, 0, 0.0, 5.1)], source=source))
    per_channel = [Encoding(8, 0.001 * (i + 1), 0, -0.128, 0.127, True, True) for i in range(8)]
    enc.add(TensorEncoding("conv1.weight", "param", per_channel, axis=0, source=source))
    enc.add(TensorEncoding("logits", "activation", [], dtype="float", float_bitwidth=16, source=source))
    return enc


def _full_container() -> dlc.Container:
    return dlc.Container(
        model=onnx.load(MODEL),
        encodings=_encodings("calibration"),
        overrides=_encodings("overrides"),
        records=[
            dlc.CacheRecord(
                "sm8650", {"soc": "sm8650", "soc_model": 57, "arch": "v75", "vtcm_mb": 8}, b"\x00" * 99
            ),
            dlc.CacheRecord("sm8550", {"soc": "sm8550", "soc_model": 43, "arch": "v73"}, bytes(range(256))),
        ],
        meta={"source": "model.onnx", "note": "round trip"},
    )


def test_round_trip_keeps_everything(tmp_path):
    original = _full_container()
    path = tmp_path / "full.dlc"
    original.write(path)
    back = dlc.load(path)
    assert back.model.SerializeToString() == original.model.SerializeToString()
    assert back.encodings == original.encodings
    assert back.overrides == original.overrides
    assert back.quantized
    assert [(r.id, r.info, r.data) for r in back.records] == [
        (r.id, r.info, r.data) for r in original.records
    ]
    assert back.meta == original.meta
    assert back.path == path
    # what is read back writes the same members again
    again = tmp_path / "again.dlc"
    back.write(again)
    with zipfile.ZipFile(path) as a, zipfile.ZipFile(again) as b:
        for name in a.namelist():
            if name != dlc.MANIFEST:
                assert a.read(name) == b.read(name), name


def test_manifest_describes_every_member(tmp_path):
    path = tmp_path / "full.dlc"
    _full_container().write(path)
    with zipfile.ZipFile(path) as z:
        assert z.namelist()[0] == dlc.MANIFEST
        manifest = json.loads(z.read(dlc.MANIFEST))
        members = {n: z.read(n) for n in z.namelist() if n != dlc.MANIFEST}
    assert manifest["format"] == "opendlc" and manifest["format_version"] == dlc.FORMAT_VERSION
    assert manifest["producer"].startswith("opendlc ")
    assert manifest["created"].endswith("+00:00")
    assert manifest["quantized"] is True
    assert set(members) == {
        "model.onnx",
        "encodings.json",
        "overrides.json",
        "records/sm8650.bin",
        "records/sm8550.bin",
    }
    for name, blob in members.items():
        assert manifest["members"][name] == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    assert manifest["graph"]["inputs"] == [{"name": "image", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert manifest["graph"]["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert manifest["records"][0] == {
        "id": "sm8650",
        "member": "records/sm8650.bin",
        "soc": "sm8650",
        "soc_model": 57,
        "arch": "v75",
        "vtcm_mb": 8,
    }


def test_large_models_keep_their_weights_as_external_data(tmp_path, monkeypatch):
    # The real threshold is 1.8 GB; the mechanism is the same at any size.
    monkeypatch.setattr(dlc, "EXTERNAL_DATA_THRESHOLD", 4096)
    model = onnx.load(MODEL)
    path = tmp_path / "big.dlc"
    dlc.Container(model=model).write(path)
    with zipfile.ZipFile(path) as z:
        assert set(z.namelist()) == {dlc.MANIFEST, "model.onnx", "model.onnx.data"}
        inline = onnx.ModelProto.FromString(z.read("model.onnx"))
        assert any(t.data_location == TensorProto.EXTERNAL for t in inline.graph.initializer)
    back = dlc.load(path)
    for a, b in zip(model.graph.initializer, back.model.graph.initializer, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))


def test_plain_onnx_is_read_too():
    c = dlc.load(MODEL)
    assert c.path == MODEL and not c.quantized and c.records == []
    assert dlc.graph_io(c.model)["inputs"][0]["name"] == "image"


def test_failed_write_leaves_nothing_and_keeps_an_older_file(tmp_path):
    target = tmp_path / "out.dlc"
    target.write_bytes(b"older")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), dlc.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert target.read_bytes() == b"older"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dlc"]


# ---- bad input, through the command line ---------------------------------------------------------
@pytest.fixture(scope="module")
def good_dlc(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "digits.dlc"
    _full_container().write(path)
    return path


def _rezip(src: Path, dst: Path, edit: Callable[[dict[str, bytes], dict], None]) -> Path:
    """Copy a container, letting ``edit`` change its members and its manifest (a dict)."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(members.pop(dlc.MANIFEST))
    edit(members, manifest)
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr(dlc.MANIFEST, json.dumps(manifest))
        for n, b in members.items():
            z.writestr(n, b)
    return dst


def _reseal(members: dict[str, bytes], manifest: dict, name: str) -> None:
    manifest["members"][name] = {
        "size": len(members[name]),
        "sha256": hashlib.sha256(members[name]).hexdigest(),
    }


def _invalid_onnx() -> onnx.ModelProto:
    """A model onnx.checker rejects: a Relu given two inputs."""
    node = helper.make_node("Relu", ["x", "x"], ["y"])
    graph = helper.make_graph(
        [node],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _corrupt(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("model.onnx")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 100, start + 164):  # flip bytes inside model.onnx's compressed data
        data[i] ^= 0x5A
    dst.write_bytes(bytes(data))
    return dst


def _truncated(src: Path, folder: Path) -> Path:
    dst = folder / "truncated.dlc"
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


def _text(src: Path, folder: Path) -> Path:
    dst = folder / "text.dlc"
    dst.write_text("hello, I am not a zip\n")
    return dst


def _qairt(dst: Path) -> Path:
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("model", b"\x00" * 64)
        z.writestr("model.params", b"\x01" * 64)
        z.writestr("model.params.bin", b"\x02" * 64)
        z.writestr("dlc.metadata", b"{}")
    return dst


def _tampered(members, manifest):
    members["encodings.json"] = members["encodings.json"].replace(b"0.02", b"0.03")


def _future(members, manifest):
    manifest["format_version"] = 99


def _no_model(members, manifest):
    del members["model.onnx"], manifest["members"]["model.onnx"]


def _bad_model_inside(members, manifest):
    members["model.onnx"] = _invalid_onnx().SerializeToString()
    _reseal(members, manifest, "model.onnx")


def _bad_encodings_inside(members, manifest):
    members["encodings.json"] = b'{"format": "opendlc-encodings", "version": 1, "tensors": {"a": 3}}'
    _reseal(members, manifest, "encodings.json")


def _bad_manifest(members, manifest):
    manifest["members"] = ["model.onnx"]


BAD_CONTAINERS = {
    "corrupt": (lambda good, d: _corrupt(good, d / "corrupt.dlc"), ("corrupt",)),
    "truncated": (_truncated, ("corrupt or truncated",)),
    "non-zip": (_text, ("not a container (not a zip file)",)),
    "checksum mismatch": (
        lambda good, d: _rezip(good, d / "tampered.dlc", _tampered),
        ("checksum mismatch in member encodings.json",),
    ),
    "unknown format version": (
        lambda good, d: _rezip(good, d / "future.dlc", _future),
        ("unknown container format version 99", "reads 1..1"),
    ),
    "missing model.onnx": (
        lambda good, d: _rezip(good, d / "nomodel.dlc", _no_model),
        ("container has no model.onnx",),
    ),
    "model inside fails onnx.checker": (
        lambda good, d: _rezip(good, d / "badmodel.dlc", _bad_model_inside),
        ("model.onnx: ONNX model fails onnx.checker",),
    ),
    "malformed encodings.json": (
        lambda good, d: _rezip(good, d / "badenc.dlc", _bad_encodings_inside),
        ("encodings.json is malformed",),
    ),
    "malformed manifest": (
        lambda good, d: _rezip(good, d / "badmanifest.dlc", _bad_manifest),
        ("manifest.json is malformed",),
    ),
    "QAIRT-produced DLC": (
        lambda good, d: _qairt(d / "qairt.dlc"),
        ("QAIRT/SNPE-produced DLC", "opendlc cannot read Qualcomm's proprietary format", "opendlc convert"),
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONTAINERS))
@pytest.mark.parametrize("command", ["info", "convert"])
def test_bad_container_is_one_line_exit_1(case, command, good_dlc, tmp_path):
    make, needles = BAD_CONTAINERS[case]
    bad = make(good_dlc, tmp_path)
    before = bad.read_bytes()
    out = tmp_path / "out" / "converted.dlc"
    out.parent.mkdir()
    args = ["info", bad] if command == "info" else ["convert", bad, "-o", out]
    one_line_error(run(*args), 1, str(bad), *needles)
    assert bad.read_bytes() == before  # inputs are never modified
    assert list(out.parent.iterdir()) == []  # no partial output


def test_debug_shows_the_traceback(good_dlc, tmp_path):
    bad = _rezip(good_dlc, tmp_path / "future.dlc", _future)
    result = run("info", bad, "--debug", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("opendlc: error: ")


@pytest.mark.parametrize(
    "kind, content, needles",
    [
        ("not protobuf", b"\xff\xfe this is not an onnx model \x00" * 8, ("not", "ONNX model")),
        ("fails onnx.checker", _invalid_onnx().SerializeToString(), ("ONNX model fails onnx.checker",)),
    ],
)
def test_bad_onnx_is_one_line_exit_1(kind, content, needles, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    one_line_error(run("info", bad), 1, str(bad), *needles)
    one_line_error(run("convert", bad, "-o", tmp_path / "out.dlc"), 1, str(bad), *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_missing_input_is_a_usage_error(tmp_path):
    missing = tmp_path / "nothing.dlc"
    one_line_error(run("info", missing), 2, str(missing), "no such file")
    one_line_error(run("convert", tmp_path), 2, str(tmp_path), "is a folder")


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.mark.parametrize(
    "where, needles",
    [
        ("missing/out.dlc", ("does not exist",)),
        ("a_file/out.dlc", ("is not a folder",)),
        ("a_folder", ("it is a folder",)),
        ("/proc/opendlc-test.dlc", ("cannot write",)),
        ("too_large.dlc", ("File too large",)),  # the write fails half-way
    ],
)
def test_unwritable_output_is_one_line_and_leaves_nothing(where, needles, tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    target = Path(where) if where.startswith("/") else tmp_path / where
    extra = {"preexec_fn": _limit_file_size} if where == "too_large.dlc" else {}
    one_line_error(run("convert", MODEL, "-o", target, **extra), 1, str(target), "cannot write", *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list((tmp_path / "a_folder").iterdir()) == []


def test_a_failed_write_keeps_the_previous_output(tmp_path):
    target = tmp_path / "digits.dlc"
    ok(run("convert", MODEL, "-o", target))
    before = target.read_bytes()
    one_line_error(
        run("convert", MODEL, "-o", target, "--input_dim", "image", "1,1,8,8", preexec_fn=_limit_file_size),
        1,
        "File too large",
    )
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["digits.dlc"]


def test_output_over_input_is_refused(tmp_path, good_dlc):
    copy = tmp_path / "digits.dlc"
    copy.write_bytes(good_dlc.read_bytes())
    one_line_error(run("convert", copy), 2, "would overwrite the input")
    assert copy.read_bytes() == good_dlc.read_bytes()


def test_load_errors_are_opendlc_errors(tmp_path, good_dlc):
    bad = _rezip(good_dlc, tmp_path / "future.dlc", _future)
    with pytest.raises(OpendlcError, match="unknown container format version"):
        dlc.load(bad)
