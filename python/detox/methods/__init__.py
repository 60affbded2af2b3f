"""The method registry: one module per detoxification method.

Every module of this package that defines a :class:`~detox.methods.base.Method` subclass with a
``name`` registers it on import (the package imports all its modules), so adding a method is one
file plus its tests and its docs page (``docs/adding-a-method.md``). Everything that needs to know
about methods goes through here: the generation driver, the CLI's options (one group per method,
``--<method>-<setting>``), the evaluation harness (which models to load), the rewrite pipeline,
CMD synthesis and the generation-cache key.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import GenerationResult, Method, Models, NoSettings, Sampling, Settings, SettingsError, setting

__all__ = ["GenerationResult", "Method", "Models", "NoSettings", "Sampling", "Settings", "SettingsError", "setting",
           "get", "names", "methods", "settings_for", "needs_toxic", "register"]

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Add a method class to the registry (done for every module of this package on import; call it
    for a method defined elsewhere)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    other = _REGISTRY.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"two methods are named {cls.name!r}: {other.__module__} and {cls.__module__}")
    if cls.Settings.method and cls.Settings.method != cls.name:  # a settings class shared with another method
        import dataclasses

        cls.Settings = dataclasses.dataclass(type(f"{cls.__name__}Settings", (cls.Settings,), {}))
    cls.Settings.method = cls.name
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base" or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, Method) and obj is not Method and obj.name \
                    and obj.__module__ == mod.__name__:
                register(obj)


def methods() -> list[type[Method]]:
    """Every registered method class, in listing order."""
    return sorted(_REGISTRY.values(), key=lambda c: (c.order, c.name))


def names() -> tuple[str, ...]:
    return tuple(c.name for c in methods())


def get(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SettingsError(f"unknown method {name!r}; choose one of {', '.join(names())}") from None


def settings_for(name: str, settings=None) -> Settings:
    """Validated settings of method ``name`` from ``None`` (the defaults), a dict, or its Settings."""
    cls = get(name)
    if settings is None:
        return cls.Settings().validate()
    if isinstance(settings, dict):
        return cls.Settings.from_dict(settings)
    if not isinstance(settings, cls.Settings):
        raise SettingsError(f"method {name} takes {cls.Settings.__name__}, got {type(settings).__name__}")
    return settings.validate()


def needs_toxic(method_names) -> bool:
    """Whether any of these methods contrasts with a toxic model."""
    return any(get(n).needs_toxic for n in method_names)


_discover()
