"""The method registry: every module in this package that defines a :class:`Method` subclass with a
``name`` is registered under that name. Adding a method is adding one file (and its yaml)."""

from __future__ import annotations

import importlib
import pkgutil

from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


def _discover() -> dict[str, type[Method]]:
    found: dict[str, type[Method]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Method) and obj.__module__ == module.__name__ and obj.name:
                if obj.name in found and found[obj.name] is not obj:
                    raise RuntimeError(f"two methods named {obj.name!r}: {found[obj.name]} and {obj}")
                found[obj.name] = obj
    return found


METHODS: dict[str, type[Method]] = _discover()

__all__ = ["METHODS", "Method", "MethodConfig", "StepOutput"]
