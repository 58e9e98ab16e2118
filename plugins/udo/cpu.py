"""The CPU part of a UDO package: the implementation library that also runs on the host for calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opendlc.hookspecs import hookimpl
from opendlc.udo_gen import abi
from opendlc.udo_gen.config import UdoPackage
from opendlc.udo_gen.render import CoreTarget, JinjaUdoTemplateSet


class CpuTemplateSet(JinjaUdoTemplateSet):
    name = "cpu"
    description = "CPU implementation library: per-operator C++ skeletons, host Makefile, ndk-build module"
    core_type = "CPU"

    def files(self, package: UdoPackage) -> list[tuple[str, str, dict[str, Any]]]:
        p = package.name
        core = CoreTarget("CPU")
        ops = package.operators_for("CPU")
        library = abi.implementation_library(p, "CPU")
        module = Path(library).stem.removeprefix("lib")
        src = f"jni/src/{core.dir}"
        ctx = {"core": core, "ops": ops}
        makefile = {
            "what": "the CPU implementation library",
            "library": library,
            "obj_subdir": core.dir,
            "target": "cpu_x86",
            "extra_lines": [],
            "libs": "",
            "cppflags": "",
        }
        return [
            ("shared/Interface.cpp.j2", f"{src}/{p}{core.file_tag}Interface.cpp", ctx),
            ("shared/Ops.h.j2", f"{src}/{p}{core.file_tag}Ops.h", ctx),
            ("shared/host_library.Makefile.j2", f"{src}/Makefile", makefile),
            (
                "shared/android_module.mk.j2",
                f"{src}/Android.mk",
                {
                    "module": module,
                    "what": "the CPU implementation library",
                    "extra_includes": "",
                    "ldlibs": "",
                },
            ),
            ("cpu/cpu.mk.j2", "make/cpu.mk", {**ctx, "module": module}),
        ] + [("cpu/op.cpp.j2", f"{src}/{op.type}.cpp", {**ctx, "op": op}) for op in ops]


@hookimpl
def register_udo_template_sets() -> list[CpuTemplateSet]:
    return [CpuTemplateSet()]
