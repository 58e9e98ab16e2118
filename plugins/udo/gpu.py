"""The GPU part of a UDO package: an OpenCL implementation library (Android, or a host with OpenCL)."""

from __future__ import annotations

from typing import Any

from opendlc.hookspecs import hookimpl
from opendlc.udo_gen.config import UdoOperator, UdoPackage
from opendlc.udo_gen.render import JinjaUdoTemplateSet, implementation_library_files


def _uses_half(op: UdoOperator) -> bool:
    tensors = [t.data_type("GPU") for t in op.inputs + op.outputs] + [p.data_type for p in op.tensor_params]
    return "FLOAT_16" in tensors


class GpuTemplateSet(JinjaUdoTemplateSet):
    name = "gpu"
    description = "GPU implementation library: per-operator OpenCL kernel skeletons with host glue"
    core_type = "GPU"

    def files(self, package: UdoPackage) -> list[tuple[str, str, dict[str, Any]]]:
        return implementation_library_files(
            package,
            "GPU",
            host_target="gpu_x86",
            op_template="gpu/op.cpp.j2",
            core_makefile="gpu/gpu.mk.j2",
            host_libs="$(if $(CL_LIBRARY_PATH),-L$(CL_LIBRARY_PATH)) -lOpenCL",
            host_cppflags="$(if $(CL_INCLUDE_PATH),-I$(CL_INCLUDE_PATH))",
            android_includes="$(CL_INCLUDE_PATH)",
            android_ldlibs="-L$(CL_LIBRARY_PATH) -lOpenCL",
            op_context=lambda op: {"uses_half": _uses_half(op)},
        )


@hookimpl
def register_udo_template_sets() -> list[GpuTemplateSet]:
    return [GpuTemplateSet()]
