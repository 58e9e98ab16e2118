"""Plugins: a third-party distribution installed with pip adds features with no change to opendlc."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from clirun import DIGITS, ok, one_line_error, run

from opendlc.errors import UsageError
from opendlc.hookspecs import hookimpl
from opendlc.plugin_manager import DuplicateNameError, PluginInfo, PluginManager, get_plugin_manager
from opendlc.targets import Soc

DEMO = Path(__file__).parent / "fixtures" / "opendlc-demo-plugin"
DEMO_DIST = "opendlc-demo-plugin"


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


def _installed(dist: str) -> bool:
    return _pip("show", "-q", dist).returncode == 0


@pytest.fixture(scope="module")
def demo_plugin(tmp_path_factory):
    """The demo distribution pip-installed into the running environment while this module's tests run."""
    if _installed(DEMO_DIST):  # left over from an interrupted run
        _pip("uninstall", "-y", "-q", DEMO_DIST)
    src = tmp_path_factory.mktemp("demo") / DEMO.name  # build a copy: the repository stays clean
    shutil.copytree(DEMO, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    done = _pip("install", "--no-deps", "--no-build-isolation", "-q", str(src))
    assert done.returncode == 0, done.stderr
    try:
        yield DEMO_DIST
    finally:
        done = _pip("uninstall", "-y", "-q", DEMO_DIST)
        assert done.returncode == 0, done.stderr
        assert not _installed(DEMO_DIST)


def _python(code: str, **kwargs) -> str:
    """Run ``code`` in a fresh interpreter of this environment (which sees what pip just installed)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, **kwargs
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _plugins_json(**kwargs) -> dict:
    return json.loads(ok(run("plugins", "--json", **kwargs)).stdout)


def _names(listing: dict, kind: str) -> set[str]:
    return {entry["name"] for entry in listing["registered"][kind]}


# ---- the installed third-party plugin --------------------------------------------------------------
def test_demo_plugin_shows_up_everywhere(demo_plugin):
    listing = _plugins_json()
    demo = [p for p in listing["plugins"] if p["name"] == "demo"]
    assert demo == [
        {"name": "demo", "module": "opendlc_demo_plugin", "distribution": DEMO_DIST, "version": "0.3.0"}
    ]
    by_name = {e["name"]: e for kind in listing["registered"].values() for e in kind}
    assert by_name["demo-central90"]["distribution"] == DEMO_DIST
    assert by_name["demo9999"]["distribution"] == DEMO_DIST
    assert "soc_model 9999, v81, VTCM 4 MB" in by_name["demo9999"]["details"]
    assert "demo-central90" in _names(listing, "Calibration methods")
    assert "demo9999" in _names(listing, "SoCs")
    # built-ins are still there, from opendlc
    assert by_name["sm8650"]["distribution"] == "opendlc"
    assert "demo-count-ops" in ok(run("--help")).stdout
    table = ok(run("plugins")).stdout
    assert DEMO_DIST in table and "demo9999" in table


def test_demo_subcommand_runs(demo_plugin, tmp_path):
    assert ok(run("demo-count-ops", DIGITS / "model.onnx")).stdout.strip() == "model.onnx: 7 nodes"
    # it gets what every command gets: logging options, one-line errors
    assert ok(run("--quiet", "demo-count-ops", DIGITS / "model.onnx")).stdout.strip().endswith("7 nodes")
    one_line_error(run("demo-count-ops", tmp_path / "missing.onnx"), 2, "no such file")


def test_demo_soc_is_found_by_the_registry(demo_plugin):
    out = _python(
        """
        from opendlc.plugin_manager import get_plugin_manager
        pm = get_plugin_manager()
        soc = pm.socs.get("DEMO9999")  # SoC names are case-insensitive
        arch = pm.htp_archs.get(soc.htp_arch)
        print(soc.name, soc.soc_model, soc.vtcm_mb, arch.dsp_arch)
        """
    )
    assert out.split() == ["demo9999", "9999", "4", "81"]


def test_demo_calibration_method_chooses_a_range(demo_plugin):
    out = _python(
        """
        import json
        import numpy as np
        from opendlc.calibration import CalibrationOptions
        from opendlc.observers import TensorStats
        from opendlc.plugin_manager import get_plugin_manager
        pm = get_plugin_manager()
        method = pm.calibration_methods.get("demo-central90")
        stats = TensorStats.of(np.arange(1000, dtype=np.float32))
        lo, hi = method.choose_range(
            stats, bitwidth=8, schema=pm.schemas.get("asymmetric"), options=CalibrationOptions()
        )
        enc = pm.schemas.get("asymmetric").encode(lo, hi, 8)
        print(json.dumps([lo, hi, enc.scale, enc.offset]))
        """
    )
    lo, hi, scale, offset = json.loads(out)
    assert abs(lo - 50) <= 1 and abs(hi - 950) <= 1  # 5th and 95th percentile of 0..999
    assert offset <= 0 and scale > 0


def test_load_plugins_env_loads_only_the_named_ones(demo_plugin):
    listing = _plugins_json(env={"OPENDLC_LOAD_PLUGINS": "demo, command_plugins"})
    assert sorted(p["name"] for p in listing["plugins"]) == ["command_plugins", "demo"]
    assert _names(listing, "SoCs") == {"demo9999"}
    assert _names(listing, "Calibration methods") == {"demo-central90"}
    assert _names(listing, "Backends") == set()

    listing = _plugins_json(env={"OPENDLC_LOAD_PLUGINS": "command_plugins,htp_v75"})
    assert sorted(p["name"] for p in listing["plugins"]) == ["command_plugins", "htp_v75"]
    assert _names(listing, "SoCs") == {"sm8650"}

    help_text = ok(run("--help", env={"OPENDLC_LOAD_PLUGINS": ""})).stdout  # none at all
    assert "convert" not in help_text and "demo-count-ops" not in help_text


def test_load_plugins_env_with_an_unknown_name_is_a_usage_error():
    line = one_line_error(
        run("plugins", env={"OPENDLC_LOAD_PLUGINS": "command_plugins,htp_v99"}), 2, "OPENDLC_LOAD_PLUGINS"
    )
    assert "htp_v99" in line and "htp_v75" in line  # names the unknown one and the installed ones


# ---- name clashes and misses -------------------------------------------------------------------------
class _SocPlugin:
    def __init__(self, *names: str) -> None:
        self.names = names

    @hookimpl
    def register_socs(self) -> list[Soc]:
        return [Soc(name=n, soc_model=1, htp_arch="v75", vtcm_mb=8) for n in self.names]


def test_duplicate_name_from_two_plugins_names_both_providers():
    pm = PluginManager(load_entry_points=False)
    pm.register(_SocPlugin("sm1234"), PluginInfo("alpha", "alpha_mod", "dist-alpha", "1.0"))
    pm.register(_SocPlugin("other", "SM1234"), PluginInfo("beta", "beta_mod", "dist-beta", "2.0"))
    with pytest.raises(DuplicateNameError) as err:
        pm.socs  # noqa: B018 - building the registry is what fails
    message = str(err.value)
    for needle in ("SM1234", "'alpha' (dist-alpha)", "'beta' (dist-beta)"):
        assert needle in message
    assert isinstance(err.value, UsageError)


def _fake_distribution(folder: Path, dist: str, plugin: str, module: str, source: str) -> None:
    """An installed distribution as importlib.metadata sees one: a module and a .dist-info folder."""
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    info = folder / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[opendlc.plugins]\n{plugin} = {module}\n")


def test_duplicate_name_across_distributions_on_the_command_line(tmp_path):
    _fake_distribution(
        tmp_path,
        "opendlc-clash",
        "clash",
        "clash_plugin",
        """
        from opendlc.hookspecs import hookimpl
        from opendlc.targets import Soc

        @hookimpl
        def register_socs():
            return [Soc(name="sm8650", soc_model=1, htp_arch="v75", vtcm_mb=8)]
        """,
    )
    result = run("plugins", env={"PYTHONPATH": str(tmp_path)})
    one_line_error(result, 2, "SoC 'sm8650' is registered twice", "(opendlc)", "'clash' (opendlc-clash)")


def test_a_broken_plugin_is_named_in_one_line(tmp_path):
    _fake_distribution(tmp_path, "opendlc-broken", "broken", "broken_plugin", "import no_such_module\n")
    result = run("--help", env={"PYTHONPATH": str(tmp_path)})
    one_line_error(result, 1, "plugin 'broken' (opendlc-broken) failed to load", "no_such_module")


@pytest.mark.parametrize(
    "registry, name, known",
    [
        ("socs", "sm0000", "sm8650"),
        ("htp_archs", "v12", "v75"),
        ("backends", "TPU", "HTP"),
        ("calibration_methods", "magic", "min-max"),
        ("schemas", "lopsided", "asymmetric"),
    ],
)
def test_registry_miss_lists_the_known_names(registry, name, known):
    with pytest.raises(UsageError) as err:
        getattr(get_plugin_manager(), registry).get(name)
    message = str(err.value)
    assert f"'{name}'" in message and "(known: " in message and known in message
    assert "\n" not in message
