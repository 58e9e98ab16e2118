"""HTP v68 and the SoCs built on it (QNN soc_model ids from the QNN SDK constants)."""

from opendlc.hookspecs import hookimpl
from opendlc.targets import HtpArch, Soc


@hookimpl
def register_htp_archs() -> list[HtpArch]:
    return [HtpArch(name="v68", dsp_arch=68, description="Hexagon v68 (Snapdragon 888 generation)")]


@hookimpl
def register_socs() -> list[Soc]:
    return [
        Soc(name="sm8350", soc_model=30, htp_arch="v68", vtcm_mb=4),
        Soc(name="sa8295", soc_model=39, htp_arch="v68", vtcm_mb=8),
        Soc(name="sa8540", soc_model=62, htp_arch="v68", vtcm_mb=8),
        Soc(name="qcm6490", soc_model=93, htp_arch="v68", vtcm_mb=2),
        # The HTP compiler of QNN 2.51 (onnxruntime-qnn 2.7) names soc_model 93 "QCS6490" and compiles it
        # for v68 with 2 MB of VTCM (the settings it embeds in the context binary); QCM6490 shares the id.
        Soc(name="qcs6490", soc_model=93, htp_arch="v68", vtcm_mb=2),
    ]
