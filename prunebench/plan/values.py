"""Settings, torch-free: `option`, the one way a training or method setting is declared, and
config-file and command-line values typed as their field (the run config, the method catalogue
and every method's hparams use both)."""
from __future__ import annotations

import math
from dataclasses import field
from typing import Any

from prunebench.errors import PrunebenchError


def option(default: Any, help: str, choices: tuple[str, ...] = ()) -> Any:
    """A setting (a TrainConfig field or a method option): its default, one-line help
    (`prunebench list --options METHOD`) and allowed values side by side in its dataclass (the
    OpenLTH style). Write `choices` as a literal tuple: the workflow reads a method's choices
    from its source without importing it (plan/catalogue.py)."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices)})


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """A config or command-line value as the field's type (bool, int, float, optional number);
    an error naming `where` otherwise. Strings pass through."""
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return _finite(float(value))
        if kind.startswith("float | None") or kind.startswith("Optional[float]"):
            return None if value in (None, "none", "None", "null") else _finite(float(value))
        if kind.startswith("int | None") or kind.startswith("Optional[int]"):
            return None if value in (None, "none", "None", "null") else coerce(value, "int",
                                                                                where)
    except (TypeError, ValueError):
        finite = " (a finite number)" if "float" in kind else ""
        raise PrunebenchError(f"{where}: {value!r} is not a valid {kind}{finite}") from None
    return value


def _finite(x: float) -> float:
    """NaN or infinity as a setting only makes a run diverge later: refuse it up front."""
    if not math.isfinite(x):
        raise ValueError(x)
    return x
