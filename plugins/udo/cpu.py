"""The CPU part of a UDO package: the implementation library that also runs on the host for calibration."""

from __future__ import annotations

from typing import Any

from opendlc.hookspecs import hookimpl
from opendlc.udo_gen.config import UdoPackage
from opendlc.udo_gen.render import JinjaUdoTemplateSet, implementation_library_files


class CpuTemplateSet(JinjaUdoTemplateSet):
    name = "cpu"
    description = "CPU implementation library: per-operator C++ skeletons, host Makefile, ndk-build module"
    core_type = "CPU"

    def files(self, package: UdoPackage) -> list[tuple[str, str, dict[str, Any]]]:
        return implementation_library_files(
            package, "CPU", host_target="cpu_x86", op_template="cpu/op.cpp.j2", core_makefile="cpu/cpu.mk.j2"
        )


@hookimpl
def register_udo_template_sets() -> list[CpuTemplateSet]:
    return [CpuTemplateSet()]
