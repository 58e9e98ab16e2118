"""HTP v75 and the SoCs built on it (QNN soc_model ids from the QNN SDK constants)."""

from opendlc.hookspecs import hookimpl
from opendlc.targets import HtpArch, Soc


@hookimpl
def register_htp_archs() -> list[HtpArch]:
    return [HtpArch(name="v75", dsp_arch=75, description="Hexagon v75 (Snapdragon 8 Gen 3 generation)")]


@hookimpl
def register_socs() -> list[Soc]:
    return [
        Soc(name="sm8650", soc_model=57, htp_arch="v75", vtcm_mb=8),
    ]
