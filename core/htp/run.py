"""Running a cache record on the HTP emulator, as snpe-net-run runs a cached container on a device.

The record is run as it was prepared -- its context binary, rebuilt into an EPContext model, is loaded by
the HTP backend; nothing is compiled again.  Fixed-point buffers are fed and read the way SNPE does on
the CPU side: float data is quantized with the buffer's encoding on the way in and dequantized on the way
out, unless the caller passes (or wants) the native integers.
"""

from __future__ import annotations

import logging

import numpy as np

from opendlc.container import CacheRecord, Container
from opendlc.errors import UsageError
from opendlc.htp.context import EmulatorSession
from opendlc.htp.prepare import find_record
from opendlc.htp.qdq import Buffer
from opendlc.htp.qnn import htp_backend_path, library_versions
from opendlc.input_list import InputSpec

log = logging.getLogger("opendlc.htp")


class RecordRunner:
    """One cache record, loaded on the HTP emulator."""

    def __init__(self, record: CacheRecord) -> None:
        info = record.info
        if info.get("backend") != "HTP" or "graph" not in info or "provider_options" not in info:
            raise UsageError(f"cache record {record.id} is not an HTP record opendlc can run")
        self.record = record
        self.inputs = [Buffer.from_json(d) for d in info["inputs"]]
        self.outputs = [Buffer.from_json(d) for d in info["outputs"]]
        built = str(info.get("library", {}).get("qnn_build", ""))
        here = library_versions()["qnn_sdk"]
        if built and here != "?" and not built.lstrip("v").startswith(here):
            log.warning(
                "record %s was prepared with QNN %s; the installed HTP libraries are QNN %s",
                record.id,
                built,
                here,
            )
        options = {**info["provider_options"], "backend_path": htp_backend_path()}
        self.session = EmulatorSession(info["graph"], record.data, options, what=f"record {record.id}")

    @property
    def output_names(self) -> list[str]:
        return [b.name for b in self.outputs]

    def input_specs(self, *, native: bool = False) -> list[InputSpec]:
        """What an input list's files hold: float32, or with ``native`` the buffers' own types."""
        specs = []
        for b in self.inputs:
            if any(d is None for d in b.shape):
                raise UsageError(f"record {self.record.id}: input '{b.name}' has no static shape")
            dtype = np.dtype(b.dtype) if native else np.dtype(np.float32)
            specs.append(InputSpec(b.name, tuple(int(d) for d in b.shape), dtype))  # type: ignore[arg-type]
        return specs

    def run(
        self, feeds: dict[str, np.ndarray], *, native_inputs: bool = False, native_outputs: bool = False
    ) -> dict[str, np.ndarray]:
        """Run one sample; float in and out unless ``native_*`` (the buffers' integer types)."""
        ready = {}
        for b in self.inputs:
            if b.name not in feeds:
                raise UsageError(f"no value for input '{b.name}' of record {self.record.id}")
            x = np.asarray(feeds[b.name])
            if b.fixed_point and not native_inputs:
                x = b.quantize(x)
            ready[b.name] = np.ascontiguousarray(x.astype(b.dtype, copy=False)).reshape(
                [int(d) for d in b.shape]  # type: ignore[arg-type]
            )
        raw = self.session.run(ready)
        return {
            b.name: raw[b.name] if native_outputs or not b.fixed_point else b.dequantize(raw[b.name])
            for b in self.outputs
        }


def run_record(container: Container, soc: str | None = None, arch: str | None = None) -> RecordRunner:
    """The runner of ``container``'s record for ``soc`` (or ``arch``); an error if there is none."""
    if soc is None and arch is None:
        from opendlc.htp.prepare import DEFAULT_SOC

        soc = DEFAULT_SOC
    return RecordRunner(find_record(container, soc=soc, arch=arch))
