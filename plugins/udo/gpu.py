"""The GPU part of a UDO package: an OpenCL implementation library (Android, or a host with OpenCL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opendlc.hookspecs import hookimpl
from opendlc.udo_gen import abi
from opendlc.udo_gen.config import UdoOperator, UdoPackage
from opendlc.udo_gen.render import CoreTarget, JinjaUdoTemplateSet


def _uses_half(op: UdoOperator) -> bool:
    tensors = [t.data_type("GPU") for t in op.inputs + op.outputs] + [p.data_type for p in op.tensor_params]
    return "FLOAT_16" in tensors


class GpuTemplateSet(JinjaUdoTemplateSet):
    name = "gpu"
    description = "GPU implementation library: per-operator OpenCL kernel skeletons with host glue"
    core_type = "GPU"

    def files(self, package: UdoPackage) -> list[tuple[str, str, dict[str, Any]]]:
        p = package.name
        core = CoreTarget("GPU")
        ops = package.operators_for("GPU")
        library = abi.implementation_library(p, "GPU")
        module = Path(library).stem.removeprefix("lib")
        src = f"jni/src/{core.dir}"
        ctx = {"core": core, "ops": ops}
        makefile = {
            "what": "the GPU implementation library",
            "library": library,
            "obj_subdir": core.dir,
            "target": "gpu_x86",
            "extra_lines": [],
            "libs": "$(if $(CL_LIBRARY_PATH),-L$(CL_LIBRARY_PATH)) -lOpenCL",
            "cppflags": "$(if $(CL_INCLUDE_PATH),-I$(CL_INCLUDE_PATH))",
        }
        android = {
            "module": module,
            "what": "the GPU implementation library",
            "extra_includes": "$(CL_INCLUDE_PATH)",
            "ldlibs": "-L$(CL_LIBRARY_PATH) -lOpenCL",
        }
        return [
            ("shared/Interface.cpp.j2", f"{src}/{p}{core.file_tag}Interface.cpp", ctx),
            ("shared/Ops.h.j2", f"{src}/{p}{core.file_tag}Ops.h", ctx),
            ("shared/host_library.Makefile.j2", f"{src}/Makefile", makefile),
            ("shared/android_module.mk.j2", f"{src}/Android.mk", android),
            ("gpu/gpu.mk.j2", "make/gpu.mk", {**ctx, "module": module}),
        ] + [
            ("gpu/op.cpp.j2", f"{src}/{op.type}.cpp", {**ctx, "op": op, "uses_half": _uses_half(op)})
            for op in ops
        ]


@hookimpl
def register_udo_template_sets() -> list[GpuTemplateSet]:
    return [GpuTemplateSet()]
