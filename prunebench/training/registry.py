"""Method registry in the style of timm's model registry: one decorator, one lookup, one listing."""
from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prunebench.errors import PrunebenchError

if TYPE_CHECKING:
    from prunebench.training.method import PruningMethod

_METHODS: dict[str, type[PruningMethod]] = {}
# Packages beside `prunebench/` whose every module is imported: a method is one file in one.
PLUGIN_PACKAGES = ("methods", "baselines")


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
    """Import every module of the plugin packages (discovered, not listed), which registers them."""
    for package in PLUGIN_PACKAGES:
        for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{module.name}")


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


def check_options(name: str, options: dict[str, Any], where: str) -> bool:
    """Build method `name` with `options` as a run would (unknown names and values its
    constructor refuses raise, naming `where`); return whether it then has a budget."""
    cls = get_method(name)
    hparams = cls.hparams_cls.from_dict(options, where)
    try:
        return cls(hparams, None).is_budgeted()
    except PrunebenchError as e:
        raise PrunebenchError(str(e) if where in str(e) else f"{where}: {e}") from None
