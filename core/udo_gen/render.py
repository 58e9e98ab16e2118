"""Rendering UDO package files from Jinja2 templates: the base of the template-set plugins.

A template set lists the files it renders (:meth:`JinjaUdoTemplateSet.files`); templates are found in a
Python package (``opendlc.udo_templates`` for the built-in sets; a third-party set names its own).
Templates see the package (:class:`opendlc.udo_gen.config.UdoPackage`), the set, the C enum tables
and the library/symbol names of :mod:`opendlc.udo_gen.abi`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from opendlc import __version__
from opendlc.errors import OpendlcError
from opendlc.udo import UdoTemplateSet
from opendlc.udo_gen import abi
from opendlc.udo_gen.config import DATA_TYPES, QUANTIZATION_MODES, TENSOR_LAYOUTS, UdoOperator, UdoPackage

log = logging.getLogger("opendlc.udo")


def c_string(text: str, width: int = 96) -> str:
    """``text`` as a C string literal (split into adjacent literals of about ``width`` characters)."""
    pieces: list[str] = []
    current = ""
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            piece = "\\" + ch
        elif ch == "?":  # keeps trigraphs out
            piece = "\\?"
        elif ch == "\n":
            piece = "\\n"
        elif 0x20 <= byte < 0x7F:
            piece = ch
        else:
            piece = f"\\{byte:03o}"  # octal escapes end after three digits, unlike \x
        current += piece
        if len(current) >= width or ch == "\n":
            pieces.append(current)
            current = ""
    if current or not pieces:
        pieces.append(current)
    return "\n    ".join(f'"{p}"' for p in pieces)


@cache
def environment(template_package: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(template_package, ""),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["c_string"] = c_string
    env.filters["to_json"] = to_json
    env.globals.update(
        opendlc_version=__version__,
        abi=abi,
        DATA_TYPES=DATA_TYPES,
        TENSOR_LAYOUTS=TENSOR_LAYOUTS,
        QUANTIZATION_MODES=QUANTIZATION_MODES,
    )
    return env


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


@dataclass(frozen=True)
class CoreTarget:
    """One implementation target of a package: a core type, and for DSP an architecture."""

    type: str  # CPU, GPU, DSP
    arch: str = ""  # DSP architecture, e.g. v68

    @property
    def dir(self) -> str:
        """The folder under jni/src: ``CPU``, ``DSP_V68``."""
        return f"{self.type}_{self.arch.upper()}" if self.arch else self.type

    @property
    def file_tag(self) -> str:
        """The part of file names that names the target: ``Cpu``, ``DspV68``."""
        return self.type.title() + self.arch.title()

    @property
    def suffix(self) -> str:
        """The part of function names and make targets that names the target: ``cpu``, ``dsp_v68``."""
        return f"{self.type.lower()}_{self.arch.lower()}" if self.arch else self.type.lower()

    @property
    def label(self) -> str:
        return f"{self.type} {self.arch}" if self.arch else self.type

    def function(self, package: str, op: UdoOperator, what: str) -> str:
        """The C name of an operator's function on this target, e.g. ``Pkg_Op_cpu_execute``."""
        return f"{package}_{op.type}_{self.suffix}_{what}"


class JinjaUdoTemplateSet(UdoTemplateSet):
    """A template set whose files are Jinja2 templates of a Python package."""

    template_package = "opendlc.udo_templates"

    def files(self, package: UdoPackage) -> list[tuple[str, str, dict[str, Any]]]:
        """(template name, output path relative to the package root, extra context) of each file."""
        raise NotImplementedError

    def context(self, package: UdoPackage) -> dict[str, Any]:
        return {"package": package, "template_set": self}

    def render(self, package: UdoPackage, out_dir: Path) -> list[Path]:
        env = environment(self.template_package)
        written: list[Path] = []
        base = self.context(package)
        for template_name, relative, extra in self.files(package):
            target = out_dir / relative
            if target.exists():
                raise OpendlcError(
                    f"UDO template set '{self.name}' would overwrite {relative}, which another set wrote"
                )
            try:
                text = env.get_template(template_name).render(**base, **extra)
            except jinja2.TemplateError as e:
                where = f"{template_name}:{e.lineno}" if getattr(e, "lineno", None) else template_name
                raise OpendlcError(f"UDO template set '{self.name}': template {where}: {e}") from None
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            log.debug("rendered %s from %s", relative, template_name)
            written.append(target)
        return written


def implementation_library_files(
    package: UdoPackage,
    core_type: str,
    *,
    host_target: str,
    op_template: str,
    core_makefile: str,
    host_libs: str = "",
    host_cppflags: str = "",
    android_includes: str = "",
    android_ldlibs: str = "",
    op_context: Any = None,
) -> list[tuple[str, str, dict[str, Any]]]:
    """The files of a core's implementation library that every host-buildable core has (interface,
    ops header, host Makefile, Android module, the core's make fragment), then one ``op_template``
    source per operator (``op_context(op)``, if given, adds to its context)."""
    p = package.name
    core = CoreTarget(core_type)
    ops = package.operators_for(core_type)
    library = abi.implementation_library(p, core_type)
    module = Path(library).stem.removeprefix("lib")
    src = f"jni/src/{core.dir}"
    ctx = {"core": core, "ops": ops}
    what = f"the {core_type} implementation library"
    makefile = {
        "what": what,
        "library": library,
        "obj_subdir": core.dir,
        "target": host_target,
        "extra_lines": [],
        "libs": host_libs,
        "cppflags": host_cppflags,
    }
    android = {"module": module, "what": what, "extra_includes": android_includes, "ldlibs": android_ldlibs}
    return [
        ("shared/Interface.cpp.j2", f"{src}/{p}{core.file_tag}Interface.cpp", ctx),
        ("shared/Ops.h.j2", f"{src}/{p}{core.file_tag}Ops.h", ctx),
        ("shared/host_library.Makefile.j2", f"{src}/Makefile", makefile),
        ("shared/android_module.mk.j2", f"{src}/Android.mk", android),
        (core_makefile, f"make/{core_type.lower()}.mk", {**ctx, "module": module}),
    ] + [
        (op_template, f"{src}/{op.type}.cpp", {**ctx, "op": op, **(op_context(op) if op_context else {})})
        for op in ops
    ]
