"""Writing outputs atomically: a temporary file in the target folder, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from opendlc.errors import OpendlcError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``, else it is removed."""
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise OpendlcError(f"{target}: cannot write: {folder} {problem}")
    if target.is_dir():
        raise OpendlcError(f"{target}: cannot write: it is a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise OpendlcError(f"{target}: cannot write: {e.strerror}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            # mkstemp makes the file private (0600); an output gets the usual permissions (umask)
            umask = os.umask(0)
            os.umask(umask)
            if tmp_path.is_file():
                os.chmod(tmp_path, 0o666 & ~umask)
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_path, target)
        except OSError as e:  # disk full, file too large, a folder in the way: one line, not a traceback
            raise OpendlcError(f"{target}: cannot write: {e.strerror or e}") from e
        with contextlib.suppress(OSError):  # make the rename durable where the OS allows
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
