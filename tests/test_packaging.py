"""Packaging: the wheel holds one import package ``opendlc`` and nothing named core or plugins."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from clirun import REPO, ok, run, script

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FOLDERS = {"core": "opendlc", "plugins": "opendlc.plugins", "udo_templates": "opendlc.udo_templates"}
SDK_SCRIPTS = [
    "snpe-dlc-quant",
    "snpe-dlc-quantize",
    "qairt-quantizer",
    "snpe-dlc-graph-prepare",
    "snpe-udo-package-generator",
]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the repository: the wheel is built from it (so the work tree stays clean)."""
    src = tmp_path_factory.mktemp("wheel") / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "*.egg-info", "__pycache__", "quickstart-output"
        ),
    )
    return src


@pytest.fixture(scope="module")
def wheel(source) -> Path:
    """A wheel built the way pip builds one."""
    dist = source.parent / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    (found,) = dist.glob("opendlc-*.whl")
    return found


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return z.namelist()


def _packages_on_disk(root: Path) -> set[str]:
    """Every folder with an ``__init__.py`` under core/, plugins/ and udo_templates/, as a package name."""
    out = set()
    for folder, package in FOLDERS.items():
        for init in (root / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(root / folder)
            if "__pycache__" not in rel.parts:
                out.add(".".join([package, *rel.parts]))
    return out


def test_the_wheel_holds_only_opendlc(wheel):
    names = _names(wheel)
    top = {n.split("/")[0] for n in names}
    assert top == {"opendlc", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for prefix in ("opendlc/", "opendlc/plugins/", "opendlc/udo_templates/", "opendlc/cli/"):
        assert any(n.startswith(prefix) for n in names), prefix
    for stray in ("core", "plugins", "udo_templates", "tests", "examples", "docs"):
        assert stray not in top


def test_every_package_folder_is_listed_and_shipped(source, wheel):
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = _packages_on_disk(source)
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert listed - on_disk == set(), "pyproject lists packages that have no folder"
    names = set(_names(wheel))
    for package in on_disk:
        assert package.replace(".", "/") + "/__init__.py" in names, package
    # every module in the source tree is in the wheel
    for folder, package in FOLDERS.items():
        for module in (source / folder).rglob("*.py"):
            rel = module.relative_to(source / folder)
            assert "/".join([*package.split("."), *rel.parts]) in names, module


def test_the_wheel_declares_the_console_scripts_and_plugins(wheel):
    with zipfile.ZipFile(wheel) as z:
        (ep_name,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = configparser.ConfigParser(delimiters="=")
        entry_points.optionxform = str  # keep the case of names
        entry_points.read_string(z.read(ep_name).decode())
    scripts = dict(entry_points["console_scripts"])
    assert set(scripts) == {"opendlc", *SDK_SCRIPTS}
    assert all(target.startswith("opendlc.") for target in scripts.values())
    plugins = dict(entry_points["opendlc.plugins"])
    assert plugins == PYPROJECT["project"]["entry-points"]["opendlc.plugins"]


def test_every_module_of_the_wheel_imports_from_the_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    code = f"""
import importlib, pathlib, opendlc
root = pathlib.Path(opendlc.__file__).parent
assert root == pathlib.Path({str(target / "opendlc")!r}), root
for path in sorted(root.rglob("*.py")):
    parts = path.relative_to(root.parent).with_suffix("").parts
    importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
print("imported", len(list(root.rglob("*.py"))))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported")


def test_console_scripts_are_installed():
    for name in ["opendlc", *SDK_SCRIPTS]:
        assert os.access(script(name), os.X_OK), name
    assert ok(run("--version")).stdout.strip() == f"opendlc {PYPROJECT['project']['version']}"


@pytest.mark.parametrize("name", SDK_SCRIPTS)
def test_sdk_scripts_run(name, tmp_path):
    # Implemented or not, each answers: --help works once implemented, and a missing implementation
    # exits 1 saying which capability is missing.
    result = run("--help", prog=name, cwd=tmp_path)
    if result.returncode == 0:
        assert result.stdout.strip()
    else:
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"{name}: error: {result.stderr.split('error: ', 1)[1].strip()}"
        ]
        assert "is not available in this version of opendlc" in result.stderr
