"""Method registry in the style of timm's model registry: one decorator, one lookup, one listing."""
from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prunebench.errors import PrunebenchError
from prunebench.plan.catalogue import PLUGIN_PACKAGES

if TYPE_CHECKING:
    from prunebench.training.method import PruningMethod

_METHODS: dict[str, type[PruningMethod]] = {}
# Other distributions add methods through this entry-point group: each entry names a module
# whose import registers its methods, e.g. `[project.entry-points."prunebench.methods"]`
# `mymethod = "mypackage.mymethod"`.
ENTRY_POINT_GROUP = "prunebench.methods"


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
    """Import every module of the plugin packages (named in plan/catalogue.py; their modules are
    discovered, not listed) and every module an installed distribution names in the entry-point
    group, which registers their methods."""
    for package in PLUGIN_PACKAGES:
        for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{module.name}")
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin is named, not a raw traceback
            raise PrunebenchError(
                f"the method plugin {entry.name!r} = {entry.value!r} (entry point group "
                f"{ENTRY_POINT_GROUP!r}, distribution {getattr(entry.dist, 'name', '?')}) "
                f"failed to import: {type(e).__name__}: {e}") from e


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
