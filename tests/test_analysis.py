"""The quantization analysis: per-layer SQNR, sensitivity, verdict, and ``opendlc analyze``'s files."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from analysis_models import SENSITIVE, spiky_net, write_input_list
from clirun import ok, one_line_error, run
from onnx import TensorProto, helper, numpy_helper
from realmodels import sqnr_db
from tinymodels import samples

from opendlc import container as dlc
from opendlc.analysis import analyze
from opendlc.analysis.svg import display_histogram, histogram_svg
from opendlc.container import Container
from opendlc.encodings import EncodingSet
from opendlc.observers import TensorStats
from opendlc.quant.export import to_qdq_model
from opendlc.quant.options import QuantizerOptions

CALIBRATION = samples(16, seed=1)
HELDOUT = samples(4, seed=7)
SECTIONS = ("summary", "options", "layers", "sensitivity", "histograms", "encodings", "verdict")
CONFIGS = {
    "default": [],
    "per-channel": ["--use_per_channel_quantization", "--bias_bitwidth", "32"],
}


def outputs(model: onnx.ModelProto, feeds: list[dict], names: list[str] | None = None) -> list[list]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [s.run(names, f) for f in feeds]


def output_sqnr(model: onnx.ModelProto, float_model: onnx.ModelProto) -> float:
    ref = np.concatenate([o[0].ravel() for o in outputs(float_model, HELDOUT)])
    got = np.concatenate([o[0].ravel() for o in outputs(model, HELDOUT)])
    return sqnr_db(ref, got)


@pytest.fixture(scope="module")
def report():
    return analyze(Container(spiky_net()), CALIBRATION, heldout=HELDOUT, progress=False)


def test_the_sensitive_layer_is_named_worst(report):
    worst = report.sensitivity[0]
    assert (worst.item.kind, worst.item.tensor) == ("activation", SENSITIVE)
    # by a wide margin: quantizing it alone costs far more than any other item alone
    assert report.sensitivity[1].output_sqnr_db - worst.output_sqnr_db > 10
    # the verdict promotes it first, and the output gains much
    first, target = report.verdict.items[0]
    assert (first.tensor, target) == (SENSITIVE, "int16")
    assert report.verdict.gain_db > 10
    assert report.verdict.steps[0].kept and report.verdict.steps[0].item.tensor == SENSITIVE


def test_per_layer_sqnr_equals_a_direct_computation(report):
    """Fetch the float and the quantized-simulated activations and compute the SQNR in numpy."""
    c = analyze_container(report)
    qdq = to_qdq_model(c)
    taps = ["c2", "sq", SENSITIVE, "t", "y"]
    float_vals = outputs(_with_outputs(c.model, taps), CALIBRATION, taps)
    q_names = [f"{t}__dq" if t != "y" else "y" for t in taps]
    q_vals = outputs(_with_outputs(qdq, q_names), CALIBRATION, q_names)
    rows = {r.tensor: r for r in report.layers}
    for i, t in enumerate(taps):
        ref = np.concatenate([v[i].ravel() for v in float_vals])
        got = np.concatenate([v[i].ravel() for v in q_vals])
        assert rows[t].sqnr_db == pytest.approx(sqnr_db(ref, got), abs=0.02), t
        enc = c.encodings[t].encodings[0]
        own = sqnr_db(ref, enc.quantize_dequantize(ref))
        assert rows[t].encoding_sqnr_db == pytest.approx(own, abs=0.02), t
    # worst first, and every activation with an encoding is there
    assert [r.sqnr_db for r in report.worst_layers] == sorted(r.sqnr_db for r in report.layers)
    assert {r.tensor for r in report.layers} == set(c.encodings.tensors) - {
        n for n, t in c.encodings.tensors.items() if t.kind == "param"
    }


def test_sqnr_lost_where_computed(report):
    rows = {r.tensor: r for r in report.layers}
    # Tanh passes on the small values the coarse 8-bit cube destroyed: the SQNR collapses there
    assert max(report.layers, key=lambda r: r.drop_db).tensor == "t"
    assert rows["t"].drop_db == pytest.approx(rows[SENSITIVE].sqnr_db - rows["t"].sqnr_db)
    # through the fused Conv+Relu: c2 is fed by r1, the graph input feeds r1, nothing feeds x
    assert rows["c2"].drop_db == pytest.approx(rows["r1"].sqnr_db - rows["c2"].sqnr_db)
    assert rows["r1"].drop_db == pytest.approx(rows["x"].sqnr_db - rows["r1"].sqnr_db)
    assert rows["x"].drop_db == 0


def test_sensitivity_equals_a_hand_built_qdq_model(report):
    """Only ``spiky`` quantized, with Q/DQ nodes written here rather than by the exporter."""
    c = analyze_container(report)
    enc = c.encodings[SENSITIVE].encodings[0]
    m = onnx.ModelProto()
    m.CopyFrom(c.model)
    for n in m.graph.node:
        n.input[:] = [f"{SENSITIVE}_dq" if i == SENSITIVE else i for i in n.input]
    m.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(enc.scale, dtype=np.float32), "s"),
            numpy_helper.from_array(np.array(enc.zero_point, dtype=np.uint8), "z"),
        ]
    )
    m.graph.node.extend(
        [
            helper.make_node("QuantizeLinear", [SENSITIVE, "s", "z"], ["q8"]),
            helper.make_node("DequantizeLinear", ["q8", "s", "z"], [f"{SENSITIVE}_dq"]),
        ]
    )
    m = _sorted(m)
    row = next(r for r in report.sensitivity if r.item.tensor == SENSITIVE)
    assert row.output_sqnr_db == pytest.approx(output_sqnr(m, c.model), abs=0.02)


def test_encodings_table_and_histograms(report):
    c = analyze_container(report)
    rows = {r.tensor: r for r in report.encodings}
    assert set(rows) == set(c.encodings.tensors)
    w1 = rows["w1"]
    assert (w1.kind, w1.bitwidth, w1.method) == ("weight", 8, "min-max / asymmetric")
    assert rows["b1"].kind == "bias" and rows["x"].kind == "activation"
    spiky = c.encodings[SENSITIVE].encodings[0]
    assert rows[SENSITIVE].scale == [spiky.scale] and rows[SENSITIVE].offset == [spiky.offset]
    # every activation has a histogram; its range covers the data and the encoding
    assert set(report.histograms) == {r.tensor for r in report.layers}
    h = report.histograms[SENSITIVE]
    assert h.lo <= min(h.data_min, h.enc_min) and h.hi >= max(h.data_max, h.enc_max)
    assert sum(h.counts) > 0 and h.clipped_fraction == 0  # min-max clips nothing


def test_promotion_reapplies_the_backend_constraints():
    """A promoted tensor's encoding spreads to what HTP ties to it, and fixed 16-bit encodings hold."""
    from opendlc.analysis.variants import Item, promote
    from opendlc.quant.api import quantize
    from opendlc.quant.calibrate import collect_statistics

    opts = QuantizerOptions()
    c = quantize(Container(spiky_net()), CALIBRATION, opts, progress=False)
    acts = [n for n, t in c.encodings.tensors.items() if t.kind == "activation"]
    stats = collect_statistics(c.model, CALIBRATION, acts, progress=False)
    items = [Item("activation", "c3", "conv3", "Conv"), Item("activation", "t", "saturate", "Tanh")]
    overrides, mixed = promote(c.model, c.encodings, items, stats, opts)
    # the Reshape after c3 keeps c3's (now 16-bit) encoding: nothing is requantized inside it
    assert set(overrides.tensors) == {"c3", "y", "t"}
    assert mixed["y"].encodings == mixed["c3"].encodings and mixed["c3"].bitwidth == 16
    # HTP's fixed 16-bit Tanh encoding: [-1, 1) with scale 2^-15
    t = mixed["t"].encodings[0]
    assert (t.bitwidth, t.scale, t.offset) == (16, 2.0**-15, -(2**15))
    # the bias after a promoted input is derived again (8-bit biases come from their values: unchanged)
    assert mixed["b3"] == c.encodings["b3"]
    assert all(mixed[n] == c.encodings[n] for n in c.encodings.tensors if n not in overrides.tensors)


def test_histogram_marks_values_outside_the_encoding_range():
    stats = TensorStats.of(np.concatenate([np.linspace(-1, 1, 1000), [5.0, 6.0]]))
    h = display_histogram(stats, -1.0, 1.0, step=2 / 255)
    assert h is not None and h.clipped_fraction == pytest.approx(2 / 1002, rel=0.05)
    svg = histogram_svg(h, "t <&> name")
    assert 'class="clipped"' in svg and 'class="enc"' in svg and "t &lt;&amp;&gt; name" in svg
    inside = display_histogram(stats, -1.0, 6.0, step=7 / 255)
    assert inside.clipped_fraction == 0 and 'class="clipped"' not in histogram_svg(inside, "x")


def test_json_and_overrides_round_trip(report, tmp_path):
    from opendlc.analysis.render import write_report

    files = write_report(report, tmp_path / "r.html")
    assert (files.html, files.json, files.overrides) == (
        tmp_path / "r.html",
        tmp_path / "r.json",
        tmp_path / "r_overrides.json",
    )
    data = json.loads(files.json.read_text())
    assert all(s in data for s in SECTIONS)
    assert data["verdict"]["overrides_file"] == "r_overrides.json"
    ov = EncodingSet.from_aimet(json.loads(files.overrides.read_text()))
    assert SENSITIVE in ov.tensors and ov[SENSITIVE].bitwidth == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json", "r_overrides.json"]


def test_a_float_model_with_per_channel_options(tmp_path):
    opts = QuantizerOptions(use_per_channel_quantization=True, bias_bitwidth=32)
    r = analyze(Container(spiky_net()), CALIBRATION, options=opts, heldout=HELDOUT, progress=False)
    assert r.options["use_per_channel_quantization"] and r.sensitivity[0].item.tensor == SENSITIVE
    rows = {e.tensor: e for e in r.encodings}
    assert len(rows["w2"].scale) == 4
    assert rows["w2"].method == "min-max / asymmetric per-channel, then HTP constraint"  # made symmetric
    assert rows["b2"].method.startswith("derived")
    assert r.verdict.gain_db > 10


def test_candidates_zero_runs_every_activation():
    r = analyze(Container(spiky_net()), CALIBRATION[:6], candidates=0, sensitivity_samples=2, progress=False)
    runs = {s.item.tensor for s in r.sensitivity if s.item.kind == "activation"}
    assert runs == {x.tensor for x in r.layers if x.source == "calibration"}
    assert "every activation" in r.sensitivity_how


def test_generator_samples_are_read_once_and_kept():
    r = analyze(Container(spiky_net()), (s for s in CALIBRATION[:6]), progress=False, sensitivity_samples=2)
    assert r.samples == 6 and r.sensitivity_samples == 2


# ---- the command line -----------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=list(CONFIGS))
def cli(request, tmp_path_factory):
    """quantize -> analyze through the installed commands; the report's files and the lists."""
    d = tmp_path_factory.mktemp(f"analyze_{request.param}")
    onnx.save(spiky_net(), d / "m.onnx")
    cal = write_input_list(d / "cal", [dict(s) for s in CALIBRATION])
    held = write_input_list(d / "held", [dict(s) for s in HELDOUT])
    ok(run("quantize", "-i", d / "m.onnx", "-l", cal, "-o", d / "q.dlc", *CONFIGS[request.param]))
    (d / "out").mkdir()
    done = ok(run("analyze", d / "q.dlc", "-l", cal, "--heldout_list", held, "-o", d / "out" / "report.html"))
    return {"dir": d, "cal": cal, "held": held, "stdout": done.stdout, "stderr": done.stderr}


def test_cli_writes_the_page_its_json_twin_and_overrides(cli):
    out = cli["dir"] / "out"
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report_overrides.json"]
    data = json.loads((out / "report.json").read_text())
    assert all(s in data for s in SECTIONS)
    assert data["sensitivity"]["rows"][0]["tensor"] == SENSITIVE
    assert data["verdict"]["keep"][0]["tensor"] == SENSITIVE
    assert "4 sample(s) held out" in data["sensitivity"]["how"]
    # tables on the terminal for the worst layers, and the verdict
    assert "Most sensitive" in cli["stdout"] and SENSITIVE in cli["stdout"] and "Verdict" in cli["stdout"]
    page = (out / "report.html").read_text()
    assert page.count("<svg") == len(data["histograms"]) + 1 and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )


def test_cli_verdict_gain_is_reproduced_by_convert_and_quantize(cli):
    """The overrides file applied the documented way gives the gain the report states (within 0.5 dB)."""
    d = cli["dir"]
    data = json.loads((d / "out" / "report.json").read_text())
    stated = data["verdict"]["gain_db"]
    extra = CONFIGS["per-channel"] if "per-channel" in d.name else []
    ok(
        run(
            "convert",
            d / "m.onnx",
            "--quantization_overrides",
            d / "out" / "report_overrides.json",
            "-o",
            d / "c.dlc",
        )
    )
    ok(run("quantize", "-i", d / "c.dlc", "-l", cli["cal"], "-o", d / "q2.dlc", *extra))
    float_model = spiky_net()
    before = output_sqnr(to_qdq_model(dlc.load(d / "q.dlc")), float_model)
    after = output_sqnr(to_qdq_model(dlc.load(d / "q2.dlc")), float_model)
    assert stated > 10
    assert after - before == pytest.approx(stated, abs=0.5)
    assert before == pytest.approx(data["verdict"]["baseline_output_sqnr_db"], abs=0.5)


def test_cli_bad_input_is_one_line(tmp_path, cli):
    d = cli["dir"]
    r = run("analyze", d / "q.dlc", "-l", cli["cal"], "-o", tmp_path / "missing" / "r.html")
    one_line_error(r, 2, "does not exist")
    r = run("analyze", d / "q.dlc", "-l", cli["cal"], "-o", tmp_path / "r.json")
    one_line_error(r, 2, "JSON twin")
    r = run("analyze", d / "q.dlc", "-l", tmp_path / "nope.txt", "-o", tmp_path / "r.html")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope.txt" in r.stderr
    r = run("analyze", d / "q.dlc", "-l", cli["cal"], "--sensitivity_samples", "0", "-o", tmp_path / "r.html")
    one_line_error(r, 2, "at least 1 sample")
    assert list(tmp_path.iterdir()) == []


# ---- helpers ---------------------------------------------------------------------------------------------
def analyze_container(report) -> Container:
    """The container the module's report analysed (quantized the same way, deterministically)."""
    from opendlc.quant.api import quantize

    return quantize(Container(spiky_net()), CALIBRATION, QuantizerOptions(), progress=False)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    return m


def _sorted(m: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes in topological order (the Q/DQ pair was appended at the end)."""
    produced = {i.name for i in m.graph.input} | {t.name for t in m.graph.initializer}
    pending, ordered = list(m.graph.node), []
    while pending:
        for n in pending:
            if all(i in produced or not i for i in n.input):
                ordered.append(n)
                produced.update(n.output)
                pending.remove(n)
                break
    del m.graph.node[:]
    m.graph.node.extend(ordered)
    return m


def test_sqnr_helpers_handle_silence():
    from opendlc.analysis.measure import sqnr_db as s

    assert s(1.0, 0.0) == math.inf and s(0.0, 1.0) == -math.inf and s(10.0, 1.0) == pytest.approx(10.0)
    assert TensorProto.FLOAT == 1  # keep the import honest for the helper above


def test_quantize_report(tmp_path):
    """``opendlc quantize --report`` quantizes, then analyses on the calibration inputs."""
    onnx.save(spiky_net(), tmp_path / "m.onnx")
    cal = write_input_list(tmp_path / "cal", [dict(s) for s in CALIBRATION[:8]])
    r = run(
        "quantize",
        "-i",
        tmp_path / "m.onnx",
        "-l",
        cal,
        "-o",
        tmp_path / "q.dlc",
        "--report",
        tmp_path / "nope" / "r.html",
    )
    one_line_error(r, 2, "does not exist")
    assert not (tmp_path / "q.dlc").exists()  # checked before quantizing
    done = ok(
        run(
            "quantize",
            "-i",
            tmp_path / "m.onnx",
            "-l",
            cal,
            "-o",
            tmp_path / "q.dlc",
            "--use_per_channel_quantization",
            "--export_stripped_dlc",
            "--report",
            tmp_path / "r.html",
        )
    )
    assert "Most sensitive" in done.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    # the stripped container records no options: the command's are used
    assert data["options"]["use_per_channel_quantization"] is True
    assert data["sensitivity"]["rows"][0]["tensor"] == SENSITIVE
    assert (tmp_path / "r.html").is_file() and (tmp_path / "r_overrides.json").is_file()


@pytest.mark.real_models
@pytest.mark.slow
def test_ppocr_cls_worst_layers_and_reproduced_gain(ppocr, tmp_path):
    """On the real classifier: the report names its worst layers (per-tensor weights; a depthwise one is
    the first to fix), and the overrides file, applied with convert + quantize, gives the gain the report
    states.  Symmetric weights: HTP holds asymmetric per-tensor weights beyond int8 per channel, which
    the CPU simulation now does too, and that already repairs cls's depthwise layers."""
    import realmodels

    from opendlc.analysis.render import write_report
    from opendlc.model_edit import set_input_shapes

    shape = realmodels.input_shape("cls")
    model = set_input_shapes(onnx.load(ppocr("cls")), {"x": list(shape)})
    onnx.save(model, tmp_path / "cls.onnx")
    cal = [{"x": x} for x in realmodels.image_crops(shape, 8, seed=0)]
    held = [{"x": x} for x in realmodels.image_crops(shape, 2, seed=1000)]
    options = QuantizerOptions(param_quantizer_schema="symmetric")
    report = analyze(Container(model), cal, options=options, heldout=held, candidates=6, progress=False)
    assert report.sensitivity[0].item.kind == "weights"
    assert any("depthwise" in item.tensor for item, _ in report.verdict.items)
    assert report.verdict.gain_db > 3
    files = write_report(report, tmp_path / "cls.html")

    cal_list = write_input_list(tmp_path / "cal", cal)
    symmetric = ("--param_quantizer_schema", "symmetric")
    ok(run("quantize", "-i", tmp_path / "cls.onnx", "-l", cal_list, "-o", tmp_path / "q.dlc", *symmetric))
    ok(
        run(
            "convert",
            tmp_path / "cls.onnx",
            "--quantization_overrides",
            files.overrides,
            "-o",
            tmp_path / "c.dlc",
        )
    )
    ok(run("quantize", "-i", tmp_path / "c.dlc", "-l", cal_list, "-o", tmp_path / "q2.dlc", *symmetric))

    def sqnr(path) -> float:
        ref = np.concatenate([o[0].ravel() for o in outputs(model, held)])
        got = np.concatenate([o[0].ravel() for o in outputs(to_qdq_model(dlc.load(path)), held)])
        return sqnr_db(ref, got)

    before, after = sqnr(tmp_path / "q.dlc"), sqnr(tmp_path / "q2.dlc")
    assert before == pytest.approx(report.verdict.baseline_sqnr_db, abs=0.5)
    assert after - before == pytest.approx(report.verdict.gain_db, abs=0.5)
