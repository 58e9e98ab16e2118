"""UDO template sets: the templates that render one part of a user-defined-op package."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any


class UdoTemplateSet(ABC):
    """Renders the files of one part of a UDO package (a core type, a target).  Registered by a plugin."""

    name: str
    description: str
    core_type: str  # CPU, GPU, DSP, or "" for the parts every package has

    @abstractmethod
    def render(self, package: Any, out_dir: Path) -> list[Path]:
        """Write this part of ``package`` under ``out_dir``; return the files written."""
