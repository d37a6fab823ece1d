"""Settings, torch-free: `option`, the one way a training or method setting is declared, and
config-file and command-line values typed as their field (the run config, the method catalogue
and every method's hparams use both)."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from prunebench.errors import PrunebenchError


def option(default: Any, help: str, choices: tuple[str, ...] = (), bounds: str = "") -> Any:
    """A setting (a TrainConfig or RunConfig field, or a method option): its default
    (dataclasses.MISSING: required), one-line help (`prunebench list --options METHOD`),
    allowed values and valid range (interval text such as "(0, inf)" or "[0, 1)") side by side
    in its dataclass (the OpenLTH style). Write `choices` and `bounds` as literals: the workflow
    reads a method's from its source without importing it (plan/catalogue.py); `run`,
    `check-options` and the workflow's grid all check them (`check_allowed`)."""
    if bounds:
        interval(bounds)  # a malformed declaration fails where it is written
    return field(default=default, metadata={"help": help, "choices": tuple(choices),
                                            "bounds": bounds})


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """A config or command-line value as the field's type (bool, int, float, str, optional
    number); an error naming `where` otherwise (a list or mapping where one value is expected,
    a bool where a number is, a number where text is)."""
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _BOOL_WORDS:
                return _BOOL_WORDS[value.lower()]
            raise ValueError(value)
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if isinstance(value, bool) or not isinstance(value, str | int | float | None):
            raise TypeError(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return _finite(float(value))
        if kind.startswith("float | None") or kind.startswith("Optional[float]"):
            return None if value in _NONE_WORDS else _finite(float(value))
        if kind.startswith("int | None") or kind.startswith("Optional[int]"):
            return None if value in _NONE_WORDS else coerce(value, "int", where)
    except (TypeError, ValueError, OverflowError):
        finite = " (a finite number)" if "float" in kind else ""
        raise PrunebenchError(f"{where}: {short_repr(value)} is not a valid {kind}{finite}"
                              ) from None
    return value


_BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
_NONE_WORDS = (None, "none", "None", "null")


def short_repr(value: Any, limit: int = 80) -> str:
    """A value's repr cut to `limit` characters, for one-line messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _finite(x: float) -> float:
    """NaN or infinity as a setting only makes a run diverge later: refuse it up front."""
    if not math.isfinite(x):
        raise ValueError(x)
    return x


# A setting's valid range, declared beside its default and help as interval text such as
# "[0, 1)", "(0, inf)" or "[1, inf)": one literal that the workflow reads from the method files'
# source without importing them, that `list --options` prints, and that every check uses.
_INTERVAL = re.compile(r"([\[(])\s*([-+]?(?:inf|[0-9.eE+-]+))\s*,\s*([-+]?(?:inf|[0-9.eE+-]+))"
                       r"\s*([\])])")


@dataclass(frozen=True)
class Interval:
    """A range of numbers; `low_closed`/`high_closed` say whether each end is included."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool
    text: str

    def __contains__(self, x: float) -> bool:
        above = x >= self.low if self.low_closed else x > self.low
        below = x <= self.high if self.high_closed else x < self.high
        return above and below


@cache
def interval(text: str) -> Interval:
    """Parse declared interval text ("[0, 1)", "(0, inf)"); a malformed one is a programming
    error of the declaration, named."""
    m = _INTERVAL.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"bounds {text!r} is not an interval such as '[0, 1)' or '(0, inf)'")
    low, high = (int(v) if re.fullmatch(r"[-+]?[0-9]+", v) else float(v) for v in (m[2], m[3]))
    if m[1] == "[" and math.isinf(low) or m[4] == "]" and math.isinf(high) or low > high:
        raise ValueError(f"bounds {text!r}: an infinite end must be open and low <= high")
    return Interval(low, high, m[1] == "[", m[4] == "]", f"{m[1]}{m[2]}, {m[3]}{m[4]}")


def check_allowed(value: Any, where: str, choices: tuple[Any, ...] = (), bounds: str = ""
                  ) -> None:
    """Refuse a typed setting outside its declared choices or bounds, naming `where` and what
    is allowed; None (an optional setting left unset) passes."""
    if value is None:
        return
    if choices and value not in choices:
        raise PrunebenchError(f"{where}={value!r} is not allowed; allowed: "
                              f"{', '.join(map(str, choices))}")
    if bounds and not isinstance(value, bool) and value not in interval(bounds):
        raise PrunebenchError(f"{where}={value!r} is out of range; allowed: {allowed_text(bounds)}")


def check_fields(obj: Any, where: str) -> None:
    """Every field of a dataclass instance declared with `option` inside its choices and range;
    `where` prefixes each field's name in the message."""
    for f in dataclasses.fields(obj):
        check_allowed(getattr(obj, f.name), f"{where}{f.name}", f.metadata.get("choices", ()),
                      f.metadata.get("bounds", ""))


def check_setting(owner: type, name: str, value: Any, where: str) -> None:
    """`value` inside the declared choices and range of field `name` of dataclass `owner`
    (a setting checked outside its dataclass, e.g. `prepare --val-fraction`)."""
    f = {f.name: f for f in dataclasses.fields(owner)}[name]
    check_allowed(value, where, f.metadata.get("choices", ()), f.metadata.get("bounds", ""))


def allowed_text(bounds: str) -> str:
    """How a range reads in a message or in `list --options` ("in [0, 1)", ">= 1")."""
    i = interval(bounds)
    if math.isinf(i.low) and math.isinf(i.high):
        return "any finite number"
    if math.isinf(i.high):
        return f"{'>=' if i.low_closed else '>'} {i.low}"
    return f"in {i.text}"
