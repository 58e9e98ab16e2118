from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import realmodels  # noqa: E402


@pytest.fixture(scope="session")
def ppocr():
    """Function name -> path of a PP-OCR model (det, rec, cls), fetched with pip and cached."""
    return realmodels.ppocr_model
