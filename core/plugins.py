"""Loads plugins from the ``llmrt`` entry-point group into one pluggy PluginManager.

Each entry point is loaded on its own and each hook implementation is called on its own, so a
plugin that fails to import, or whose hook raises, is recorded in ``failures`` and skipped: it
never takes llmrt down. ``LLMRT_PLUGINS=cpu,vulkan`` limits loading to the named entry points
(an empty value loads none).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from llmrt import hookspecs

ENV_ALLOW = "LLMRT_PLUGINS"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that failed to load (``stage == "import"``) or whose hook raised (``stage`` is
    the hook's name)."""

    plugin: str
    stage: str
    error: str
    detail: str = ""


@dataclass
class PluginInfo:
    """What ``llmrt plugins`` shows for one loaded entry point."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Plugins:
    """The plugin manager together with what was loaded and what failed."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.loaded: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        # The plugin whose hook implementation is running, so register() callbacks know who calls.
        self.current_plugin = ""

    def load_entry_points(self, allow: set[str] | None = None) -> None:
        """Load every entry point of the ``llmrt`` group (or those named in ``allow``)."""
        seen: set[str] = set()
        for ep in sorted(entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
            if ep.name in seen or (allow is not None and ep.name not in allow):
                continue
            seen.add(ep.name)
            self._load(ep)
        self.manager.check_pending()

    def _load(self, ep: EntryPoint) -> None:
        dist = ep.dist
        try:
            module = ep.load()
            self.manager.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin is reported, never fatal
            self.failures.append(
                PluginFailure(ep.name, "import", _describe(exc), traceback.format_exc())
            )
            return
        self.loaded[ep.name] = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.metadata["Name"] if dist else None,
            version=dist.version if dist else None,
        )

    def hooks_of(self, name: str) -> list[str]:
        plugin = self.manager.get_plugin(name)
        if plugin is None:
            return []
        callers = self.manager.get_hookcallers(plugin) or []
        return sorted(caller.name for caller in callers)

    def call(self, hook: str, **kwargs: Any) -> None:
        """Call each implementation of ``hook`` on its own; record the ones that raise."""
        caller = getattr(self.manager.hook, hook)
        for impl in caller.get_hookimpls():
            args = {name: kwargs[name] for name in impl.argnames}
            self.current_plugin = impl.plugin_name
            try:
                impl.function(**args)
            except Exception as exc:
                self.failures.append(
                    PluginFailure(impl.plugin_name, hook, _describe(exc), traceback.format_exc())
                )
            finally:
                self.current_plugin = ""

    def fail(self, plugin: str, stage: str, error: str) -> None:
        """Record a contract violation found by core (a bad registration, for instance)."""
        self.failures.append(PluginFailure(plugin, stage, error))


_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded from entry points on first use."""
    global _plugins
    if _plugins is None:
        plugins = Plugins()
        allow = os.environ.get(ENV_ALLOW)
        names = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
        plugins.load_entry_points(names)
        _plugins = plugins
    return _plugins


def reset_plugins() -> None:
    """Forget loaded plugins and everything derived from them (tests use this)."""
    global _plugins
    _plugins = None
    for clear in _on_reset:
        clear()


_on_reset: list[Callable[[], None]] = []


def on_reset(clear: Callable[[], None]) -> Callable[[], None]:
    """Register a cache that must be cleared with the plugins (the device registry, say)."""
    _on_reset.append(clear)
    return clear
