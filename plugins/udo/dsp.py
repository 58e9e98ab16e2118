"""The DSP part of a UDO package: a kernel library per Hexagon architecture named in dsp_arch_types."""

from __future__ import annotations

from typing import Any

from opendlc.hookspecs import hookimpl
from opendlc.udo_gen import abi
from opendlc.udo_gen.config import UdoPackage
from opendlc.udo_gen.render import CoreTarget, JinjaUdoTemplateSet

# v65/v66 are the HVX DSPs before HTP; v68 and later are HTP generations.
DSP_ARCHS = ("v65", "v66", "v68", "v69", "v73", "v75", "v79", "v81")


class DspTemplateSet(JinjaUdoTemplateSet):
    core_type = "DSP"

    def __init__(self, arch: str) -> None:
        self.dsp_arch = arch
        self.name = f"dsp_{arch}"
        self.description = f"DSP {arch} kernel library: per-operator C++ skeletons, hexagon-clang++ Makefile"

    def files(self, package: UdoPackage) -> list[tuple[str, str, dict[str, Any]]]:
        p = package.name
        core = CoreTarget("DSP", self.dsp_arch)
        ops = package.operators_for("DSP", self.dsp_arch)
        src = f"jni/src/{core.dir}"
        ctx = {"core": core, "ops": ops, "library": abi.implementation_library(p, "DSP")}
        return [
            ("shared/Interface.cpp.j2", f"{src}/{p}{core.file_tag}Interface.cpp", ctx),
            ("shared/Ops.h.j2", f"{src}/{p}{core.file_tag}Ops.h", ctx),
            ("dsp/Makefile.j2", f"{src}/Makefile", ctx),
            ("dsp/dsp.mk.j2", f"make/{core.suffix}.mk", ctx),
        ] + [("dsp/op.cpp.j2", f"{src}/{op.type}.cpp", {**ctx, "op": op}) for op in ops]


@hookimpl
def register_udo_template_sets() -> list[DspTemplateSet]:
    return [DspTemplateSet(arch) for arch in DSP_ARCHS]
