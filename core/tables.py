"""Tables on the terminal (numbers people compare are shown as tables)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Wide enough for tables when the output is piped (rich would assume 80 columns).
console = Console(soft_wrap=False, width=max(shutil.get_terminal_size((140, 40)).columns, 100))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left", title_style="bold")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if v is None else escape(str(v)) for v in r))
    console.print(table)
