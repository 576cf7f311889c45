"""Lazy exports for packages whose modules import heavy libraries (torch, Ray).

A package lists what it exports and where each name lives; the module is imported on first
use. ``import w2w.train.config`` therefore stays light (the command line builds its options
from configs without loading torch), while ``from w2w.train import train`` still works.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``; ``exports`` maps each exported name to the
    module (relative to the package, e.g. ``".run"``) that defines it."""

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module, package), name)

    def dir_() -> list[str]:
        return sorted(exports)

    return getattr_, dir_


def make_callable(module_name: str, target: str) -> None:
    """Let the package ``module_name`` be called as the function ``target`` ("module:name").

    ``w2w.ingest`` is both a stage package and, in the documented API, the function that runs
    the stage (``w2w.ingest(cfg)``); once the package is imported Python binds the name to the
    package, so the package itself answers a call by running the function.
    """
    import sys
    import types

    module_path, _, name = target.partition(":")

    class _CallablePackage(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module(module_path), name)(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallablePackage
