"""Loads plugins from the ``llmrt`` entry-point group into one pluggy PluginManager.

Hooks are called through pluggy's hook caller, with pluggy's semantics: implementations run last
registered first, ``tryfirst``/``trylast`` move one, ``wrapper=True`` implementations run around
the others, and an implementation takes any subset of the hook's arguments. Entry points are
registered in reverse name order, so that their implementations run in name order.

Each entry point is loaded on its own and each (non-wrapper) implementation is guarded on its own,
so a plugin that fails to import, or whose hook raises, is recorded in ``failures`` and skipped:
it never takes llmrt down, and the other implementations of the hook still run.
``LLMRT_PLUGINS=cpu,vulkan`` limits loading to the named entry points (an empty value loads none);
llmrt's own entry points (modules of the ``llmrt`` package: the built-in architectures) are core,
not plugins, and always load.
"""

from __future__ import annotations

import functools
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


def _is_core(ep: EntryPoint) -> bool:
    """Whether an entry point names a module of llmrt itself (``llmrt.models``)."""
    return ep.module.split(".")[0] == hookspecs.PROJECT


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class GuardedManager(pluggy.PluginManager):
    """A PluginManager whose plain hook implementations are each guarded when registered: one that
    raises is recorded in its ``Plugins``' failures and returns None, and the call goes on to
    the next implementation in pluggy's order. Wrappers are not guarded; what one raises ends
    the call and is recorded by ``Plugins.call``."""

    def __init__(self, owner: Plugins) -> None:
        super().__init__(hookspecs.PROJECT)
        self.owner = owner

    def register(self, plugin: object, name: str | None = None) -> str | None:
        name = super().register(plugin, name)
        if name is not None:
            for caller in self.get_hookcallers(plugin) or []:
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                        impl.function = self._guard(impl, caller.name)  # type: ignore[misc]
        return name

    def _guard(self, impl: pluggy.HookImpl, hook: str) -> Callable[..., object]:
        function, owner = impl.function, self.owner

        @functools.wraps(function)
        def guarded(*args: object) -> object:
            caller, owner.current_plugin = owner.current_plugin, impl.plugin_name
            try:
                return function(*args)
            except Exception as exc:  # a broken plugin is reported, never fatal
                owner.failures.append(
                    PluginFailure(impl.plugin_name, hook, _describe(exc), traceback.format_exc())
                )
                return None
            finally:
                owner.current_plugin = caller

        return guarded


class Plugins:
    """The plugin manager together with what was loaded and what failed."""

    def __init__(self) -> None:
        self.manager = GuardedManager(self)
        self.manager.add_hookspecs(hookspecs)
        self.loaded: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        # The plugin whose hook implementation is running, so register() callbacks know who calls.
        self.current_plugin = ""

    def load_entry_points(self, allow: set[str] | None = None) -> None:
        """Load every entry point of the ``llmrt`` group (or those named in ``allow``, and
        llmrt's own)."""
        chosen: dict[str, EntryPoint] = {}
        for ep in entry_points(group=hookspecs.PROJECT):
            if allow is None or ep.name in allow or _is_core(ep):
                chosen.setdefault(ep.name, ep)
        # pluggy calls the last registered first: registered in reverse, they run in name order
        for name in sorted(chosen, reverse=True):
            self._load(chosen[name])
        self.loaded = dict(sorted(self.loaded.items()))
        self.check_pending()

    def check_pending(self) -> None:
        """Reject, with the reason, each plugin implementing a hook that does not exist (a typo,
        or a hook of a newer llmrt) instead of failing the whole load as pluggy would."""
        while True:
            try:
                self.manager.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                name = self.manager.get_name(exc.plugin) or "?"
                self.failures.append(PluginFailure(name, "import", _describe(exc)))
                self.manager.unregister(exc.plugin)
                self.loaded.pop(name, None)

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

    def call(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call ``hook`` through pluggy's hook caller (its order, ``tryfirst``/``trylast``,
        wrappers) and return the implementations' non-None results. An implementation that
        raises is recorded and skipped; a wrapper that raises ends the call and is recorded."""
        caller = getattr(self.manager.hook, hook)
        try:
            return caller(**kwargs)
        except Exception as exc:
            wrappers = [i.plugin_name for i in caller.get_hookimpls() if i.wrapper or i.hookwrapper]
            self.failures.append(
                PluginFailure(
                    ", ".join(wrappers) or hook, hook, _describe(exc), traceback.format_exc()
                )
            )
            return []

    def origin(self, plugin: str) -> str:
        """A plugin as a message names it: its distribution and entry point ("llmrt-acme 0.3.1,
        entry point acme"), or "plugin NAME" for one registered in-process."""
        info = self.loaded.get(plugin)
        if info is None or info.distribution is None:
            return f"plugin {plugin}"
        return f"{info.distribution} {info.version}, entry point {plugin}"

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
