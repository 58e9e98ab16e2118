"""Generating UDO packages: validate the config, render every applicable template set, swap in atomically.

Each package is rendered into a temporary folder beside its target and renamed into place only when
complete, so an interrupted or failed run leaves either the old package or none, never half a package.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from opendlc.errors import OpendlcError, UsageError
from opendlc.plugin_manager import get_plugin_manager
from opendlc.udo import UdoTemplateSet
from opendlc.udo_gen.config import UdoPackage, known_targets, load_config

log = logging.getLogger("opendlc.udo")


@dataclass(frozen=True)
class GeneratedPackage:
    name: str
    root: Path
    files: list[Path]  # relative to root
    template_sets: list[str]


def package_root(package: UdoPackage, output_path: str | os.PathLike[str] | None) -> Path:
    """Where ``package`` goes: OUTPUT_PATH/NAME if given, else UDO_PACKAGE_PATH/NAME, else ./NAME."""
    base = output_path if output_path is not None else (package.package_path or ".")
    return Path(os.path.abspath(base)) / package.name


def generate_packages(
    config_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    template_sets: Sequence[UdoTemplateSet] | None = None,
) -> list[GeneratedPackage]:
    """Generate every package of the config at ``config_path``; return what was written.

    Without ``force`` an existing package folder is an error (nothing is written); with it, the folder
    is replaced.  ``template_sets`` defaults to the registered ones.
    """
    if template_sets is None:
        template_sets = get_plugin_manager().udo_template_sets.items()
        core_types, dsp_archs = known_targets()
    else:
        core_types = sorted({s.core_type for s in template_sets if s.core_type})
        dsp_archs = sorted({s.dsp_arch for s in template_sets if s.core_type == "DSP" and s.dsp_arch})
    packages = load_config(config_path, known_core_types=core_types, known_dsp_archs=dsp_archs)

    # Check every target before writing anything.
    roots: dict[Path, str] = {}
    for package in packages:
        root = package_root(package, output_path)
        if root in roots:
            raise UsageError(f"{package.key} and {roots[root]} would both be written to {root}")
        roots[root] = package.key
        if root.exists() or root.is_symlink():
            if not root.is_dir() or root.is_symlink():
                raise UsageError(
                    f"{root}: exists and is not a package folder; remove it or choose another -o"
                )
            if not force:
                raise UsageError(f"{root}: a package already exists there (use -f to replace it)")

    return [
        _generate_one(package, root, template_sets) for package, root in zip(packages, roots, strict=True)
    ]


def _generate_one(
    package: UdoPackage, root: Path, template_sets: Sequence[UdoTemplateSet]
) -> GeneratedPackage:
    applicable = [s for s in template_sets if s.applies_to(package)]
    missing = [c for c in package.core_types if not any(s.core_type == c for s in applicable)]
    if missing:  # only when a caller passes its own sets
        raise UsageError(f"{package.key}: no UDO template set renders core type {', '.join(missing)}")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    except OSError as e:
        raise OpendlcError(f"{root}: cannot create the package folder ({e.strerror})") from None
    try:
        written: list[Path] = []
        for template_set in applicable:
            log.debug("package %s: rendering template set '%s'", package.name, template_set.name)
            written += template_set.render(package, staging)
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a package folder is an ordinary folder
        _swap_in(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted(p.relative_to(staging) for p in written)
    log.debug("generated package %s at %s (%d files)", package.name, root, len(files))
    return GeneratedPackage(package.name, root, files, [s.name for s in applicable])


def _swap_in(staging: Path, root: Path) -> None:
    """Rename ``staging`` to ``root``, replacing an existing ``root`` folder."""
    if not root.exists():
        staging.rename(root)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old", dir=root.parent))
    old.rmdir()  # only the unique name is wanted
    try:
        root.rename(old)
    except OSError as e:
        raise OpendlcError(f"{root}: cannot replace the existing package ({e.strerror})") from None
    try:
        staging.rename(root)
    except OSError as e:
        with contextlib.suppress(OSError):
            old.rename(root)  # put the previous package back
        raise OpendlcError(f"{root}: cannot write the package ({e.strerror})") from None
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
