"""Command-line options generated from the methods' settings: one argparse group per method,
``--<method>-<setting>``; boolean settings get ``--<method>-<setting>`` / ``--no-<method>-<setting>``."""

from __future__ import annotations

import argparse

from . import get, methods
from .base import Settings

_SEP = "__"


def _dest(method: str, name: str) -> str:
    return f"method{_SEP}{method}{_SEP}{name}"


def _help(f, tp) -> str:
    m = f.metadata
    text = m["help"]
    rng = []
    if m.get("min") is not None:
        rng.append(f"{'>' if m.get('min_exclusive') else '>='} {m['min']}")
    if m.get("max") is not None:
        rng.append(f"{'<' if m.get('max_exclusive') else '<='} {m['max']}")
    if rng:
        text += f"; {' and '.join(rng)}"
    default = m.get("default_text") or ("on" if f.default is True else "off" if f.default is False else f.default)
    if isinstance(default, str) and tp is str and not m.get("default_text") and not m.get("choices"):
        default = repr(default)
    return f"{text} (default: {default})".replace("%", "%%")


def add_method_options(parser: argparse.ArgumentParser, method_names=None) -> None:
    """Add the settings of these methods (default: all) to ``parser``, one group per method."""
    for cls in methods():
        if method_names is not None and cls.name not in method_names:
            continue
        info = cls.Settings.fields_info()
        if not info:
            continue
        g = parser.add_argument_group(f"{cls.name} settings", f"{cls.title}." + (f" See {cls.docs}." if cls.docs else ""))
        for f, tp in info:
            opt = cls.Settings.option(f.name)
            kw = dict(dest=_dest(cls.name, f.name), default=argparse.SUPPRESS, help=_help(f, tp))
            if tp is bool:
                g.add_argument(opt, action=argparse.BooleanOptionalAction, **kw)
                continue
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
            else:
                kw["metavar"] = f.metadata.get("metavar") or tp.__name__.upper()
            g.add_argument(opt, type=tp, **kw)


def method_settings_from_args(args: argparse.Namespace, method_names) -> dict[str, Settings]:
    """The validated settings of each method in ``method_names`` from the parsed options (raises
    :class:`~detox.methods.base.SettingsError` with a one-line message)."""
    given: dict[str, dict] = {}
    for key, value in vars(args).items():
        parts = key.split(_SEP)
        if len(parts) == 3 and parts[0] == "method":
            given.setdefault(parts[1], {})[parts[2]] = value
    return {name: get(name).Settings.from_dict(given.get(name, {})) for name in method_names}


def options_for_other_methods(args: argparse.Namespace, method_names) -> list[str]:
    """The method options given on the command line for methods not in ``method_names``."""
    out = []
    for key in vars(args):
        parts = key.split(_SEP)
        if len(parts) == 3 and parts[0] == "method" and parts[1] not in method_names:
            out.append(get(parts[1]).Settings.option(parts[2]))
    return out
