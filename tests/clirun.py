"""Running the installed console scripts as a user would, and checking their one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "examples" / "digits"


def script(name: str = "opendlc") -> str:
    """The console script ``name`` of the running environment (the venv's bin/)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"console script {name} is not installed"
    return found


def run(
    *args: str | os.PathLike[str],
    prog: str = "opendlc",
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    **kwargs,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [script(prog), *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def one_line_error(
    result: subprocess.CompletedProcess[str], exit_code: int, *needles: str, prog: str = "opendlc"
) -> str:
    """Check the run failed with ``exit_code`` and exactly one line on stderr holding every needle."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == exit_code, f"exit {result.returncode}, wanted {exit_code}: {result.stderr}"
    assert len(lines) == 1, f"wanted one line on stderr, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    line = lines[0]
    assert line.startswith(f"{prog}: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line
