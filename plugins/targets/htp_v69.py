"""HTP v69 and the SoCs built on it (QNN soc_model ids from the QNN SDK constants)."""

from opendlc.hookspecs import hookimpl
from opendlc.targets import HtpArch, Soc


@hookimpl
def register_htp_archs() -> list[HtpArch]:
    return [HtpArch(name="v69", dsp_arch=69, description="Hexagon v69 (Snapdragon 8 Gen 1 generation)")]


@hookimpl
def register_socs() -> list[Soc]:
    return [
        Soc(name="sm8450", soc_model=36, htp_arch="v69", vtcm_mb=8),
        Soc(name="sm8475", soc_model=42, htp_arch="v69", vtcm_mb=8),
        Soc(name="sxr2230p", soc_model=53, htp_arch="v69", vtcm_mb=8),
    ]
