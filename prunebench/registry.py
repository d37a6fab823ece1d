"""Method registry in the style of timm's model registry: one decorator, one lookup, one listing."""
from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from prunebench.errors import PrunebenchError

if TYPE_CHECKING:
    from prunebench.method import PruningMethod

_METHODS: dict[str, type[PruningMethod]] = {}
_PLUGIN_PACKAGES = ("methods", "baselines")


def register_method(name: str) -> Callable[[type[PruningMethod]], type[PruningMethod]]:
    """Class decorator registering a pruning method under `name`; a duplicate name raises."""

    def wrap(cls: type[PruningMethod]) -> type[PruningMethod]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise PrunebenchError(
                f"method name {name!r} is registered twice: by {_METHODS[name].__module__} "
                f"and by {cls.__module__}; rename one"
            )
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def _load_plugins() -> None:
    for package in _PLUGIN_PACKAGES:
        importlib.import_module(package)


def list_methods(pattern: str = "*") -> list[str]:
    """Sorted names of registered methods matching a shell-style wildcard."""
    _load_plugins()
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def get_method(name: str) -> type[PruningMethod]:
    """The method class registered as `name`, or an error listing the registered ones."""
    _load_plugins()
    if name not in _METHODS:
        raise PrunebenchError(
            f"unknown method {name!r}; registered methods: {', '.join(sorted(_METHODS))}"
        )
    return _METHODS[name]
