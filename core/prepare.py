"""Graph preparers: offline compilation of a quantized model into a cache record for one target."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PrepareTarget:
    """One thing to prepare for: a SoC, or a bare HTP architecture (``soc`` is then None)."""

    arch: str
    soc: str | None = None
    soc_model: int | None = None
    vtcm_mb: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedRecord:
    """The output of a preparer: the cache bytes and what the manifest says about them."""

    data: bytes
    info: dict[str, Any]


class GraphPreparer(ABC):
    """Compiles a quantized (QDQ) ONNX model for a backend.  Registered through a plugin."""

    name: str
    description: str
    backend: str

    @abstractmethod
    def prepare(self, model: bytes, target: PrepareTarget) -> PreparedRecord:
        """Compile ``model`` (serialized QDQ ONNX) for ``target``; raise OpendlcError on failure."""
