"""HTP v81 and the SoCs built on it (QNN soc_model ids from the QNN SDK constants)."""

from opendlc.hookspecs import hookimpl
from opendlc.targets import HtpArch, Soc


@hookimpl
def register_htp_archs() -> list[HtpArch]:
    return [HtpArch(name="v81", dsp_arch=81, description="Hexagon v81 (Snapdragon 8 Elite Gen 5 generation)")]


@hookimpl
def register_socs() -> list[Soc]:
    return [
        Soc(name="sm8850", soc_model=87, htp_arch="v81", vtcm_mb=8),
    ]
