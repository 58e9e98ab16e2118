"""Qualcomm HTP through onnxruntime-qnn: offline preparation and the emulator (see docs/htp.md).

Public API::

    from opendlc.htp import prepare_container, find_record, run_record
    cached = prepare_container(quantized, socs="sm8350,sm8650", overwrite=False, optimization_level=3)

onnxruntime and onnxruntime-qnn are imported when first needed, so importing this package is cheap and
works where the HTP libraries are not installed (their absence is a one-line error at use).
"""

from opendlc.htp.prepare import (
    DEFAULT_SOC,
    HtpPrepareOptions,
    PrepareReport,
    TargetResult,
    find_record,
    prepare_container,
    prepare_records,
    record_id,
    resolve_targets,
)
from opendlc.htp.qdq import Buffer, qdq_model_for
from opendlc.htp.run import RecordRunner, run_record

__all__ = [
    "DEFAULT_SOC",
    "Buffer",
    "HtpPrepareOptions",
    "PrepareReport",
    "RecordRunner",
    "TargetResult",
    "find_record",
    "prepare_container",
    "prepare_records",
    "qdq_model_for",
    "record_id",
    "resolve_targets",
    "run_record",
]
