"""Loading plugins and answering lookups by name.

Plugins are modules named by entry points in the group ``opendlc.plugins`` of any installed
distribution -- opendlc's own built-ins included.  ``OPENDLC_LOAD_PLUGINS`` (a comma-separated list of
entry-point names) loads only the named ones, so a run can be reproduced with a known set of plugins;
set it to an empty string to load none.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Generic, TypeVar

import importlib_metadata
import pluggy

from opendlc import hookspecs
from opendlc.errors import OpendlcError, UsageError

LOAD_PLUGINS_ENV = "OPENDLC_LOAD_PLUGINS"

T = TypeVar("T")


@dataclass(frozen=True)
class PluginInfo:
    """Where a loaded plugin came from."""

    name: str  # entry-point name
    module: str
    distribution: str
    version: str


@dataclass(frozen=True)
class Provided(Generic[T]):
    """One registered object and the plugin that provided it."""

    item: T
    plugin: str
    distribution: str


class DuplicateNameError(UsageError):
    pass


class Registry(Generic[T]):
    """Objects of one kind, by name; a miss names the known ones, a clash names both providers."""

    def __init__(self, kind: str, provided: list[Provided[T]], *, casefold: bool = False) -> None:
        self.kind = kind
        self._casefold = casefold
        self._by_name: dict[str, Provided[T]] = {}
        for entry in provided:
            key = self._key(entry.item.name)  # type: ignore[attr-defined]
            if key in self._by_name:
                first = self._by_name[key]
                raise DuplicateNameError(
                    f"{kind} '{entry.item.name}' is registered twice: by plugin '{first.plugin}' "  # type: ignore[attr-defined]
                    f"({first.distribution}) and by plugin '{entry.plugin}' ({entry.distribution})"
                )
            self._by_name[key] = entry

    def _key(self, name: str) -> str:
        return name.lower() if self._casefold else name

    def get(self, name: str) -> T:
        entry = self._by_name.get(self._key(name))
        if entry is None:
            known = ", ".join(self.names()) or "none"
            raise UsageError(f"unknown {self.kind} '{name}' (known: {known})")
        return entry.item

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._by_name

    def names(self) -> list[str]:
        return [p.item.name for p in self._by_name.values()]  # type: ignore[attr-defined]

    def items(self) -> list[T]:
        return [p.item for p in self._by_name.values()]

    def provided(self) -> list[Provided[T]]:
        return list(self._by_name.values())

    def __iter__(self) -> Iterator[T]:
        return iter(self.items())

    def __len__(self) -> int:
        return len(self._by_name)


class PluginManager:
    """pluggy's manager plus the registries built from the ``register_*`` hooks."""

    def __init__(self, *, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        only = os.environ.get(LOAD_PLUGINS_ENV)
        wanted = None if only is None else {n.strip() for n in only.split(",") if n.strip()}
        available = list(importlib_metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP))
        if wanted:
            unknown = sorted(wanted - {ep.name for ep in available})
            if unknown:  # a typo would otherwise silently run without the plugin
                raise UsageError(
                    f"{LOAD_PLUGINS_ENV} names plugins that are not installed: {', '.join(unknown)} "
                    f"(installed: {', '.join(sorted({ep.name for ep in available}))})"
                )
        for ep in available:
            if wanted is not None and ep.name not in wanted:
                continue
            dist = ep.dist
            dist_name = dist.name if dist else "?"
            if ep.name in self.plugins:
                other = self.plugins[ep.name]
                raise DuplicateNameError(
                    f"plugin name '{ep.name}' is used by {other.distribution} and by {dist_name}"
                )
            try:
                module = ep.load()
            except Exception as e:  # a broken plugin is named, not a traceback
                raise OpendlcError(
                    f"plugin '{ep.name}' ({dist_name}) failed to load: {type(e).__name__}: {e}"
                ) from e
            self.register(module, PluginInfo(ep.name, ep.value, dist_name, dist.version if dist else "?"))

    def register(self, plugin: Any, info: PluginInfo) -> None:
        """Register a plugin object (a module, or any object with ``@hookimpl`` methods)."""
        self.pm.register(plugin, name=info.name)
        self.plugins[info.name] = info

    def register_module(self, module_name: str, name: str | None = None) -> None:
        """Register an importable module as a plugin without an entry point (tests, notebooks)."""
        module = importlib.import_module(module_name)
        self.register(module, PluginInfo(name or module_name, module_name, "(registered at run time)", ""))

    def _collect(self, hook_name: str) -> list[Provided[Any]]:
        hook: pluggy.HookCaller = getattr(self.pm.hook, hook_name)
        provided: list[Provided[Any]] = []
        for impl in hook.get_hookimpls():  # registration order
            info = self.plugins.get(impl.plugin_name)
            dist = info.distribution if info else "?"
            for item in impl.function() or []:
                provided.append(Provided(item, impl.plugin_name, dist))
        return provided

    @cache  # noqa: B019 - one manager per process; registries are immutable once built
    def registry(self, hook_name: str, kind: str, casefold: bool = False) -> Registry[Any]:
        return Registry(kind, self._collect(hook_name), casefold=casefold)

    # Named registries -------------------------------------------------------------------------
    @property
    def calibration_methods(self) -> Registry[Any]:
        return self.registry("register_calibration_methods", "calibration method")

    @property
    def schemas(self) -> Registry[Any]:
        return self.registry("register_quantization_schemas", "quantization schema")

    @property
    def algorithms(self) -> Registry[Any]:
        return self.registry("register_algorithms", "algorithm")

    @property
    def backends(self) -> Registry[Any]:
        return self.registry("register_backends", "backend", casefold=True)

    @property
    def htp_archs(self) -> Registry[Any]:
        return self.registry("register_htp_archs", "HTP architecture", casefold=True)

    @property
    def socs(self) -> Registry[Any]:
        return self.registry("register_socs", "SoC", casefold=True)

    @property
    def graph_preparers(self) -> Registry[Any]:
        return self.registry("register_graph_preparers", "graph preparer")

    @property
    def udo_template_sets(self) -> Registry[Any]:
        return self.registry("register_udo_template_sets", "UDO template set")

    def kinds(self) -> dict[str, Registry[Any]]:
        """Every registry, by the heading ``opendlc plugins`` shows for it."""
        return {
            "Calibration methods": self.calibration_methods,
            "Quantization schemas": self.schemas,
            "Algorithms": self.algorithms,
            "Backends": self.backends,
            "HTP architectures": self.htp_archs,
            "SoCs": self.socs,
            "Graph preparers": self.graph_preparers,
            "UDO template sets": self.udo_template_sets,
        }

    def add_commands(self, app: Any) -> None:
        self.pm.hook.register_commands(app=app)


_manager: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, loaded from entry points on first use."""
    global _manager
    if _manager is None:
        _manager = PluginManager()
    return _manager


def reset_plugin_manager() -> None:
    """Forget the loaded plugins (tests that change what is installed or ``OPENDLC_LOAD_PLUGINS``)."""
    global _manager
    _manager = None
