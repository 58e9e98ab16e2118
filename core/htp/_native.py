"""Keeping the native libraries' chatter off our stdout/stderr.

onnxruntime logs to the process's stderr and Qualcomm's libraries print a banner on stdout, both from C++,
so Python-level redirection does not reach them: the file descriptors themselves are pointed at a temporary
file while a session is created, and what was written is returned so errors can be read from it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from rich.console import Console

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_console: Console | None = None


@dataclass
class Captured:
    text: str = ""


@contextlib.contextmanager
def captured_native_output() -> Iterator[Captured]:
    """Send fds 1 and 2 to a temporary file for the duration; the text is in the yielded object after."""
    result = Captured()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield result
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)  # read even when the body raised: that is when the text matters
            result.text = _ANSI.sub("", tmp.read().decode("utf-8", errors="replace"))


def terminal_console() -> Console:
    """A console on the process's original stderr, so progress keeps showing while fds are captured."""
    global _console
    try:
        fd = sys.stderr.fileno()
    except (OSError, ValueError, AttributeError):  # stderr is not a file (test capture, embedding)
        return Console(stderr=True)
    if _console is None:
        _console = Console(file=os.fdopen(os.dup(fd), "w", buffering=1), stderr=True)
    return _console
