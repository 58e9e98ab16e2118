"""HTP v79 and the SoCs built on it (QNN soc_model ids from the QNN SDK constants)."""

from opendlc.hookspecs import hookimpl
from opendlc.targets import HtpArch, Soc


@hookimpl
def register_htp_archs() -> list[HtpArch]:
    return [HtpArch(name="v79", dsp_arch=79, description="Hexagon v79 (Snapdragon 8 Elite generation)")]


@hookimpl
def register_socs() -> list[Soc]:
    return [
        Soc(name="sm8750", soc_model=69, htp_arch="v79", vtcm_mb=8),
    ]
