"""Progress bars for long work (on stderr, so outputs stay clean)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")
_stderr = Console(stderr=True)


def _enabled() -> bool:
    """--quiet and --silent silence progress bars too (the console's level, not the logger's, which
    stays open for the log file)."""
    from opendlc.cli.logging_options import state

    return state.settings.console_level() <= logging.INFO


class _RateColumn(ProgressColumn):
    """Items per second; blank until rich has measured a speed (it is None before the second item)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text("" if task.speed is None else f"{task.speed:.1f} {self.unit}/s")


def track(
    items: Iterable[T],
    description: str,
    *,
    total: int | None = None,
    unit: str = "samples",
    enabled: bool = True,
) -> Iterator[T]:
    """Iterate ``items`` with a progress bar showing count and rate (``unit``/s)."""
    if not enabled or not _enabled():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=_stderr, transient=False, refresh_per_second=4) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
