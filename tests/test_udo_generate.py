"""snpe-udo-package-generator / opendlc udo generate: the package layout, where it goes, -f, atomicity,
and template sets as plugins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from clirun import ok, one_line_error, run
from udotools import generate, sdk_style_config, write_config

from opendlc.errors import OpendlcError
from opendlc.hookspecs import hookimpl
from opendlc.plugin_manager import PluginManager
from opendlc.udo_gen.config import UdoPackage
from opendlc.udo_gen.generate import generate_packages
from opendlc.udo_gen.render import JinjaUdoTemplateSet

PKG = "SoftmaxUdoPackage"

EXPECTED_FILES = {
    "Makefile",
    "README.md",
    "common.mk",
    "config/udo.json",
    "include/OdlcUdo.h",
    f"include/{PKG}UdoPackage.h",
    "jni/Android.mk",
    "jni/Application.mk",
    "jni/src/reg/Android.mk",
    "jni/src/reg/Makefile",
    f"jni/src/reg/{PKG}RegLib.cpp",
    "jni/src/CPU/Android.mk",
    "jni/src/CPU/Makefile",
    "jni/src/CPU/Softmax.cpp",
    f"jni/src/CPU/{PKG}CpuInterface.cpp",
    f"jni/src/CPU/{PKG}CpuOps.h",
    "jni/src/GPU/Android.mk",
    "jni/src/GPU/Makefile",
    "jni/src/GPU/Softmax.cpp",
    f"jni/src/GPU/{PKG}GpuInterface.cpp",
    f"jni/src/GPU/{PKG}GpuOps.h",
    "jni/src/DSP_V68/Makefile",
    "jni/src/DSP_V68/Softmax.cpp",
    f"jni/src/DSP_V68/{PKG}DspV68Interface.cpp",
    f"jni/src/DSP_V68/{PKG}DspV68Ops.h",
    "jni/src/DSP_V73/Makefile",
    "jni/src/DSP_V73/Softmax.cpp",
    f"jni/src/DSP_V73/{PKG}DspV73Interface.cpp",
    f"jni/src/DSP_V73/{PKG}DspV73Ops.h",
    "make/reg.mk",
    "make/cpu.mk",
    "make/gpu.mk",
    "make/dsp_v68.mk",
    "make/dsp_v73.mk",
}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_layout_of_a_package_with_every_core_type(tmp_path):
    config_path = write_config(tmp_path, sdk_style_config())
    config_path.write_bytes(config_path.read_bytes().replace(b"\n", b"\r\n"))  # a config from Windows
    result = ok(run("-p", config_path, "-o", tmp_path / "out", prog="snpe-udo-package-generator"))
    root = tmp_path / "out" / PKG
    assert f"generated UDO package {PKG} at {root}" in result.stdout
    assert files_under(root) == EXPECTED_FILES
    # config/ holds the config exactly as given
    assert (root / "config" / "udo.json").read_bytes() == config_path.read_bytes()
    assert leftovers(tmp_path / "out") == []


def test_generated_text_is_our_own(tmp_path):
    root = generate(tmp_path, sdk_style_config())
    text = "\n".join(p.read_text() for p in root.rglob("*") if p.is_file() and p.parent.name != "config")
    for sdk_name in ("SnpeUdo", "QnnOpPackage", "Qualcomm", "Copyright", "SNPE_UDO", "Qnn_", "HexNN"):
        assert sdk_name not in text, sdk_name
    # the parts that say what is filled in: every per-operator skeleton carries the TODO markers
    for core in ("CPU", "GPU", "DSP_V68", "DSP_V73"):
        skeleton = (root / "jni" / "src" / core / "Softmax.cpp").read_text()
        assert "TODO(opendlc-udo) BEGIN" in skeleton and "TODO(opendlc-udo) END" in skeleton
    # the registration source carries the package's config, so a tool given the library knows the ops
    assert '\\"type\\": \\"Softmax\\"' in (root / "jni" / "src" / "reg" / f"{PKG}RegLib.cpp").read_text()


def test_only_the_parts_the_config_names_are_generated(tmp_path):
    config = sdk_style_config("CpuOnly")
    op = config["UdoPackage_0"]["Operators"][0]
    op["core_types"] = ["CPU"]
    del op["dsp_arch_types"]
    for t in op["inputs"] + op["outputs"]:
        t["data_type"] = t.pop("per_core_data_types")["CPU"]
    root = generate(tmp_path, config)
    assert sorted(p.name for p in (root / "jni" / "src").iterdir()) == ["CPU", "reg"]
    assert sorted(p.name for p in (root / "make").iterdir()) == ["cpu.mk", "reg.mk"]


def test_where_the_package_goes(tmp_path):
    config = sdk_style_config()
    config["UdoPackage_0"]["UDO_PACKAGE_PATH"] = str(tmp_path / "from_config")
    path = write_config(tmp_path, config)
    ok(run("-p", path, prog="snpe-udo-package-generator", cwd=tmp_path))
    assert (tmp_path / "from_config" / PKG / "Makefile").is_file()
    # -o wins over UDO_PACKAGE_PATH
    ok(run("-p", path, "-o", "cli_out", prog="snpe-udo-package-generator", cwd=tmp_path))
    assert (tmp_path / "cli_out" / PKG / "Makefile").is_file()
    # neither: the current folder
    del config["UdoPackage_0"]["UDO_PACKAGE_PATH"]
    path = write_config(tmp_path, config, "plain.json")
    ok(run("udo", "generate", "--config_path", path, cwd=tmp_path))
    assert (tmp_path / PKG / "Makefile").is_file()


def test_an_existing_package_needs_f_and_f_replaces_it(tmp_path):
    path = write_config(tmp_path, sdk_style_config())
    out = tmp_path / "out"
    ok(run("-p", path, "-o", out, prog="snpe-udo-package-generator"))
    root = out / PKG
    kernel = root / "jni" / "src" / "CPU" / "Softmax.cpp"
    kernel.write_text("// my kernel\n")
    (root / "libs").mkdir()
    for prog, args in (("snpe-udo-package-generator", []), ("opendlc", ["udo", "generate"])):
        result = run(*args, "-p", path, "-o", out, prog=prog)
        one_line_error(result, 2, f"{root}: a package already exists there (use -f to replace it)", prog=prog)
        assert kernel.read_text() == "// my kernel\n"  # untouched
    ok(run("-p", path, "-o", out, "-f", prog="snpe-udo-package-generator"))
    assert "TODO(opendlc-udo)" in kernel.read_text()
    assert not (root / "libs").exists()  # replaced, not merged
    assert files_under(root) == EXPECTED_FILES
    ok(run("udo", "generate", "-p", path, "-o", out, "--force-generation"))
    assert files_under(root) == EXPECTED_FILES
    assert leftovers(out) == []


def test_a_file_in_the_way_is_an_error_even_with_f(tmp_path):
    path = write_config(tmp_path, sdk_style_config())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / PKG).write_text("not a package")
    result = run("-p", path, "-o", tmp_path / "out", "-f", prog="snpe-udo-package-generator")
    one_line_error(result, 2, "exists and is not a package folder", prog="snpe-udo-package-generator")
    assert (tmp_path / "out" / PKG).read_text() == "not a package"


def test_several_packages_are_checked_before_any_is_written(tmp_path):
    config = sdk_style_config("First")
    config["UdoPackage_1"] = sdk_style_config("Second")["UdoPackage_0"]
    path = write_config(tmp_path, config)
    (tmp_path / "out" / "Second").mkdir(parents=True)
    result = run("-p", path, "-o", tmp_path / "out", prog="snpe-udo-package-generator")
    one_line_error(result, 2, "Second: a package already exists there", prog="snpe-udo-package-generator")
    assert not (tmp_path / "out" / "First").exists()
    result = ok(run("-p", path, "-o", tmp_path / "out", "-f", prog="snpe-udo-package-generator"))
    assert result.stdout.count("generated UDO package") == 2
    for name in ("First", "Second"):
        assert (tmp_path / "out" / name / "config" / "udo.json").read_bytes() == path.read_bytes()


class _Broken(JinjaUdoTemplateSet):
    name = "broken"
    description = "fails half-way"
    core_type = ""

    def render(self, package: UdoPackage, out_dir: Path) -> list[Path]:
        (out_dir / "half").write_text("half a package")
        raise OpendlcError("the disk is full")


def test_a_failed_generation_leaves_the_old_package_and_nothing_else(tmp_path):
    from opendlc.plugin_manager import get_plugin_manager

    sets = [*get_plugin_manager().udo_template_sets.items(), _Broken()]
    root = generate(tmp_path, sdk_style_config())
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(OpendlcError, match="the disk is full"):
        generate(tmp_path, sdk_style_config(), force=True, template_sets=sets)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert leftovers(root.parent) == []
    with pytest.raises(OpendlcError, match="the disk is full"):
        generate_packages(
            write_config(tmp_path, sdk_style_config("Fresh")), tmp_path / "out", template_sets=sets
        )
    assert not (tmp_path / "out" / "Fresh").exists() and leftovers(root.parent) == []


def test_help_shows_exactly_the_documented_options(tmp_path):
    for prog, args in (("snpe-udo-package-generator", []), ("opendlc", ["udo", "generate"])):
        for flag in ("-h", "--help"):
            text = ok(run(*args, flag, prog=prog, cwd=tmp_path)).stdout
            for option in (
                "--config_path",
                "-p",
                "--output_path",
                "-o",
                "--force-generation",
                "-f",
                "--debug",
            ):
                assert option in text, (prog, option)
    result = run(prog="snpe-udo-package-generator", cwd=tmp_path)
    one_line_error(result, 2, "--config_path", prog="snpe-udo-package-generator")
    result = run("-p", "cfg.json", "--gen_cmakelists", prog="snpe-udo-package-generator", cwd=tmp_path)
    one_line_error(result, 2, "--gen_cmakelists", prog="snpe-udo-package-generator")


def test_debug_lists_every_file_written(tmp_path):
    path = write_config(tmp_path, sdk_style_config())
    result = ok(
        run("-p", path, "-o", tmp_path / "out", "--debug", prog="snpe-udo-package-generator", cwd=tmp_path)
    )
    for name in ("Makefile", "jni/src/CPU/Softmax.cpp", "include/OdlcUdo.h"):
        assert f"rendered {name}" in result.stderr, name


class _NpuSet(JinjaUdoTemplateSet):
    """A third party's core type: one file per operator, from this test's own template package."""

    name = "npu"
    description = "a core type added by a plugin"
    core_type = "NPU"

    def files(self, package):
        return [
            ("common/jni/Application.mk.j2", f"jni/src/NPU/{op.type}.mk", {})
            for op in package.operators_for("NPU")
        ]


class _NpuPlugin:
    @hookimpl
    def register_udo_template_sets(self):
        return [_NpuSet()]


def test_a_plugin_adds_a_core_type(tmp_path):
    from opendlc.plugin_manager import PluginInfo

    pm = PluginManager()
    pm.register(_NpuPlugin(), PluginInfo("npu", "tests", "tests", "0"))
    sets = pm.udo_template_sets.items()
    config = sdk_style_config("WithNpu")
    op = config["UdoPackage_0"]["Operators"][0]
    op["core_types"].append("NPU")
    for t in op["inputs"] + op["outputs"]:
        t["per_core_data_types"]["NPU"] = "FLOAT_16"
    root = generate(tmp_path, config, template_sets=sets)
    assert (root / "jni" / "src" / "NPU" / "Softmax.mk").is_file()
    assert (root / "jni" / "src" / "CPU" / "Softmax.cpp").is_file()
    # without the plugin the same config is refused
    with pytest.raises(Exception, match=r"core_types\[3\]: unknown core type 'NPU' \(known: CPU, DSP, GPU\)"):
        generate_packages(write_config(tmp_path, config, "npu.json"), tmp_path / "other")


def test_the_templates_ship_as_package_data():
    from importlib.resources import files

    root = files("opendlc.udo_templates")
    for name in ("common/include/OdlcUdo.h.j2", "cpu/op.cpp.j2", "gpu/op.cpp.j2", "dsp/op.cpp.j2"):
        assert root.joinpath(name).is_file(), name
    assert os.path.basename(str(root)) == "udo_templates"
