"""The parts every UDO package has: the config copy, the C headers, the registration library and the
top-level build files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opendlc.hookspecs import hookimpl
from opendlc.udo_gen import abi
from opendlc.udo_gen.config import UdoPackage
from opendlc.udo_gen.render import JinjaUdoTemplateSet


class CommonTemplateSet(JinjaUdoTemplateSet):
    name = "common"
    description = "config copy, include/ headers, registration library, Makefile, common.mk, ndk-build files"
    core_type = ""

    def files(self, package: UdoPackage) -> list[tuple[str, str, dict[str, Any]]]:
        p = package.name
        reg_module = Path(abi.registration_library(p)).stem.removeprefix("lib")
        reg_makefile = {
            "what": "the registration library",
            "library": abi.registration_library(p),
            "obj_subdir": "reg",
            "target": "reg_x86",
            "extra_lines": [],
            "libs": "",
            "cppflags": "",
        }
        return [
            ("common/Makefile.j2", "Makefile", {}),
            ("common/common.mk.j2", "common.mk", {}),
            ("common/README.md.j2", "README.md", {}),
            ("common/include/OdlcUdo.h.j2", "include/OdlcUdo.h", {}),
            ("common/include/UdoPackage.h.j2", f"include/{p}UdoPackage.h", {}),
            ("common/reg/RegLib.cpp.j2", f"jni/src/reg/{p}RegLib.cpp", {}),
            ("shared/host_library.Makefile.j2", "jni/src/reg/Makefile", reg_makefile),
            (
                "shared/android_module.mk.j2",
                "jni/src/reg/Android.mk",
                {
                    "module": reg_module,
                    "what": "the registration library",
                    "extra_includes": "",
                    "ldlibs": "",
                },
            ),
            ("common/reg.mk.j2", "make/reg.mk", {"module": reg_module}),
            ("common/jni/Android.mk.j2", "jni/Android.mk", {}),
            ("common/jni/Application.mk.j2", "jni/Application.mk", {}),
        ]

    def render(self, package: UdoPackage, out_dir: Path) -> list[Path]:
        written = super().render(package, out_dir)
        config_copy = out_dir / "config" / package.config_name
        config_copy.parent.mkdir(parents=True, exist_ok=True)
        config_copy.write_bytes(package.config_text.encode("utf-8"))  # the config exactly as read
        return [*written, config_copy]


@hookimpl
def register_udo_template_sets() -> list[CommonTemplateSet]:
    return [CommonTemplateSet()]
