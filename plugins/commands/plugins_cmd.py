"""``opendlc plugins``: what is loaded, and from where."""

from __future__ import annotations

import json
from typing import Any

import typer

from opendlc.hookspecs import hookimpl
from opendlc.plugin_manager import LOAD_PLUGINS_ENV, get_plugin_manager
from opendlc.tables import console, print_table


def _details(item: Any) -> str:
    from opendlc.targets import Backend, HtpArch, Soc

    if isinstance(item, Soc):
        return f"soc_model {item.soc_model}, {item.htp_arch}, VTCM {item.vtcm_mb} MB"
    if isinstance(item, HtpArch):
        return f"dsp_arch {item.dsp_arch}; {item.description}"
    if isinstance(item, Backend):
        return (
            f"w{'/'.join(map(str, item.weight_bitwidths))} a{'/'.join(map(str, item.activation_bitwidths))} "
            f"b{'/'.join(map(str, item.bias_bitwidths))}"
            f"{' per-channel' if item.per_channel else ''}{' per-row' if item.per_row else ''}"
            f"{' fp16' if item.float16 else ''}; {item.description}"
        )
    phase = getattr(item, "phase", None)
    desc = getattr(item, "description", "")
    return f"[{phase.value}] {desc}" if phase is not None else desc


def plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables.")) -> None:
    """Show the loaded plugins, where each comes from, and what each registers."""
    pm = get_plugin_manager()
    kinds = {title: sorted(reg.provided(), key=lambda p: p.item.name) for title, reg in pm.kinds().items()}
    if as_json:
        out = {
            "plugins": [p.__dict__ for p in pm.plugins.values()],
            "registered": {
                title: [
                    {
                        "name": p.item.name,
                        "details": _details(p.item),
                        "plugin": p.plugin,
                        "distribution": p.distribution,
                    }
                    for p in provided
                ]
                for title, provided in kinds.items()
            },
        }
        typer.echo(json.dumps(out, indent=2))
        return
    print_table(
        "Loaded plugins",
        ["plugin", "module", "distribution", "version"],
        [
            (p.name, p.module, p.distribution, p.version)
            for p in sorted(pm.plugins.values(), key=lambda p: p.name)
        ],
    )
    for title, provided in kinds.items():
        print_table(
            title,
            ["name", "details", "plugin", "distribution"],
            [(p.item.name, _details(p.item), p.plugin, p.distribution) for p in provided],
        )
    console.print(f"Set {LOAD_PLUGINS_ENV}=name,name,... to load only the named plugins.")


@hookimpl
def register_commands(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
