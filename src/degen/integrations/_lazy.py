"""Classes built on another library's base class when first read, so that importing an
integration module costs nothing without that library (it is an optional extra)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def lazy_classes(module: str, builders: dict[str, Callable[[], type]],
                 install: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` that builds each class of ``builders`` on first read
    (once) and names the module; ``install`` says what to install when the library is
    missing (an ImportError that says so)."""
    built: dict[str, type] = {}

    def __getattr__(name: str) -> Any:
        if name not in builders:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        if name not in built:
            try:
                cls = builders[name]()
            except ImportError as e:
                raise ImportError(f"{name} needs {install} ({e})") from e
            cls.__module__ = module
            built[name] = cls
        return built[name]

    return __getattr__
