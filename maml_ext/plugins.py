"""Model and task-family plugins, found by name through entry points.

Built-ins are declared in our own pyproject.toml (groups ``maml_ext.models`` and ``maml_ext.tasks``)
so they take the same path as third-party plugins. Nothing is imported until a name is asked for,
so a broken plugin can never break ``import maml_ext``; its error names it and the kill switch.

``MAML_EXT_PLUGIN_AUTOLOAD=0`` stops third-party entry points from being consulted (the
built-ins, which belong to the ``maml_ext`` distribution itself, stay available); code that is
not installed registers itself with :func:`register_model` / :func:`register_task`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

AUTOLOAD_ENV = "MAML_EXT_PLUGIN_AUTOLOAD"
_OWN_DISTRIBUTION = "maml_ext"


class PluginError(RuntimeError):
    """A plugin is unknown, or could not be loaded or built."""


def _autoload_enabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class Registry:
    """Factories of one kind ("model" or "task"), from entry points and in-process registration."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._registered: dict[str, Callable[..., Any]] = {}
        self._loaded: dict[str, Callable[..., Any]] = {}

    def _entry_points(self) -> dict[str, list[EntryPoint]]:
        """Name -> its entry points: the built-in alone when there is one (a third-party package
        never replaces a built-in, whatever order the installed packages are found in), else every
        third-party one (more than one is an error when the name is used)."""
        found: dict[str, list[EntryPoint]] = {}
        autoload = _autoload_enabled()
        for ep in entry_points(group=self.group):
            own = ep.dist is not None and ep.dist.name == _OWN_DISTRIBUTION
            if not (autoload or own):
                continue
            previous = found.setdefault(ep.name, [])
            if own:
                previous[:] = [ep]
            elif not any(p.dist is not None and p.dist.name == _OWN_DISTRIBUTION for p in previous):
                if all(p.value != ep.value for p in previous):  # one package seen twice on sys.path
                    previous.append(ep)
        return found

    def register(self, name: str, factory: Callable[..., Any], *, replace: bool = False) -> None:
        """Make ``factory`` available as ``name`` in this process (shadows an entry point)."""
        if not callable(factory):
            raise TypeError(f"{self.kind} factory for {name!r} must be callable")
        if name in self._registered and not replace:
            raise PluginError(f"{self.kind} {name!r} is already registered (pass replace=True)")
        self._registered[name] = factory

    def unregister(self, name: str) -> None:
        self._registered.pop(name, None)

    def names(self) -> list[str]:
        return sorted(set(self._registered) | set(self._entry_points()))

    def factory(self, name: str) -> Callable[..., Any]:
        if name in self._registered:
            return self._registered[name]
        if name in self._loaded:
            return self._loaded[name]
        candidates = self._entry_points().get(name)
        if not candidates:
            available = ", ".join(self.names()) or "none"
            off = "" if _autoload_enabled() else f" (third-party plugins are off: {AUTOLOAD_ENV}=0)"
            raise PluginError(f"unknown {self.kind} {name!r}; available: {available}{off}")
        if len(candidates) > 1:
            found = ", ".join(f"{ep.value} (package {ep.dist.name if ep.dist else '?'})" for ep in candidates)
            raise PluginError(f"{self.kind} {name!r} is declared by more than one installed package: "
                              f"{found}; uninstall all but one")
        ep = candidates[0]
        try:
            factory = ep.load()
        except Exception as exc:
            own = ep.dist is not None and ep.dist.name == _OWN_DISTRIBUTION
            # A built-in plugin fails only for a missing optional dependency (its message names it);
            # a third-party one can also be switched off.
            hint = ("" if own else
                    f" Disable third-party plugin autoloading with {AUTOLOAD_ENV}=0.")
            raise PluginError(f"failed to load {self.kind} plugin {name!r} ({ep.value}): {exc!r}.{hint}") from exc
        if not callable(factory):
            raise PluginError(f"{self.kind} plugin {name!r} ({ep.value}) is not callable")
        self._loaded[name] = factory
        return factory

    def build(self, name: str, **kwargs: Any) -> Any:
        factory = self.factory(name)
        try:
            return factory(**kwargs)
        except TypeError as exc:
            # Usually a config key the plugin does not accept: say which plugin refused it.
            raise PluginError(f"{self.kind} {name!r} rejected its options {sorted(kwargs)}: {exc}") from exc


models = Registry("model", "maml_ext.models")
tasks = Registry("task", "maml_ext.tasks")


def register_model(name: str, factory: Callable[..., Any], *, replace: bool = False) -> None:
    """Register a model factory ``factory(in_features, out_features, **options) -> nn.Module``."""
    models.register(name, factory, replace=replace)


def register_task(name: str, factory: Callable[..., Any], *, replace: bool = False) -> None:
    """Register a task-family factory ``factory(**options) -> TaskFamily``."""
    tasks.register(name, factory, replace=replace)


def build_model(name: str, **kwargs: Any) -> Any:
    return models.build(name, **kwargs)


def build_task(name: str, **kwargs: Any) -> Any:
    return tasks.build(name, **kwargs)
