"""The public quantization API (see docs/quantization.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from opendlc.container import Container
from opendlc.errors import NotAvailableError
from opendlc.quant.options import QuantizerOptions


def quantize(
    container: Container,
    samples: Iterable[Mapping[str, np.ndarray]] | None,
    options: QuantizerOptions,
    *,
    extra_outputs: list[str] | None = None,
    progress: bool = True,
) -> Container:
    """Quantize ``container``'s float model; return a new container holding the encodings.

    ``samples`` yields one calibration input per item (input name -> array, in the model's shapes);
    it is consumed once, streaming.  ``None`` is allowed only with ``enable_float_fallback`` (encodings
    then come from the stored overrides).  ``extra_outputs`` names tensors the user asked to be graph
    outputs (the ``#``/``%`` lines of an input list).
    """
    raise NotAvailableError("the quantization engine is being written")  # replaced by the engine
