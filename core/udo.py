"""UDO template sets: the templates that render one part of a user-defined-op package."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any


class UdoTemplateSet(ABC):
    """Renders the files of one part of a UDO package (a core type, a target).  Registered by a plugin.

    The core types a UDO config may name are the ``core_type`` values of the registered sets; the DSP
    architectures it may name are the ``dsp_arch`` values of the sets whose core type is ``DSP``.  So a
    plugin adds a core type or a DSP architecture by registering a set for it.
    """

    name: str
    description: str
    core_type: str  # CPU, GPU, DSP, or "" for the parts every package has
    dsp_arch: str = ""  # for DSP sets: the architecture they render (v68, ...); "" otherwise

    @abstractmethod
    def render(self, package: Any, out_dir: Path) -> list[Path]:
        """Write this part of ``package`` under ``out_dir``; return the files written."""

    def applies_to(self, package: Any) -> bool:
        """Whether ``package`` (an :class:`opendlc.udo_gen.config.UdoPackage`) needs this part."""
        if not self.core_type:
            return True
        if self.core_type not in package.core_types:
            return False
        return not self.dsp_arch or self.dsp_arch in package.dsp_arch_types
