"""HTP v73 and the SoCs built on it (QNN soc_model ids from the QNN SDK constants)."""

from opendlc.hookspecs import hookimpl
from opendlc.targets import HtpArch, Soc


@hookimpl
def register_htp_archs() -> list[HtpArch]:
    return [HtpArch(name="v73", dsp_arch=73, description="Hexagon v73 (Snapdragon 8 Gen 2 generation)")]


@hookimpl
def register_socs() -> list[Soc]:
    return [
        Soc(name="sm8550", soc_model=43, htp_arch="v73", vtcm_mb=8),
        Soc(name="sa8255", soc_model=52, htp_arch="v73", vtcm_mb=8),
        Soc(name="qcs9100", soc_model=77, htp_arch="v73", vtcm_mb=8),
        Soc(name="ssg2115p", soc_model=46, htp_arch="v73", vtcm_mb=2),
        # QNN_SOC_MODEL_QCS8550 = 66 in QnnTypes.h; the HTP compiler of QNN 2.51 names id 66 "QCS8550" and
        # compiles it for v73 with 8 MB of VTCM (the settings it embeds in the context binary).
        Soc(name="qcs8550", soc_model=66, htp_arch="v73", vtcm_mb=8),
    ]
