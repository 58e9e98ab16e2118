"""``opendlc graph-prepare``: snpe-dlc-graph-prepare's options, offline HTP caches in the container."""

from __future__ import annotations

import typer

from opendlc.cli.sdk_prepare import graph_prepare
from opendlc.hookspecs import hookimpl


@hookimpl
def register_commands(app: typer.Typer) -> None:
    app.command("graph-prepare")(graph_prepare)
