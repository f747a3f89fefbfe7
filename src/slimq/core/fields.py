"""Typed checks of configuration fields: one rule and one message style for recipes, flags and API calls.

YAML gives `true` for `yes`, a string for `1e9` (no decimal point) and for anything quoted; these
checks refuse such values with a message that names the field, the expected type and range, and the
value received, instead of letting a string reach a comparison deep inside slimq.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from slimq.core.errors import ConfigError, did_you_mean, unknown_choice

_YAML_HINT = " In YAML write numbers without quotes, with a decimal point for floats (1.0e9, not 1e9)."


def _got(value: Any) -> str:
    kind = {bool: "a boolean", str: "a string", list: "a list", dict: "a mapping", type(None): "null",
            int: "an integer", float: "a float", tuple: "a list"}.get(type(value), f"a {type(value).__name__}")
    text = repr(value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({kind})"


def _hint(value: Any) -> str:
    return _YAML_HINT if isinstance(value, str) else ""


def _fmt(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _check_range(name: str, value: float, low: float | None, high: float | None, low_open: bool,
                 high_open: bool) -> None:
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        if low is not None and high is not None:
            where = f"in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}{')' if high_open else ']'}"
        elif low is not None:
            where = f"{'>' if low_open else '>='} {_fmt(low)}"
        else:
            where = f"{'<' if high_open else '<='} {_fmt(high or 0)}"
        shown = _fmt(value)
        raise ConfigError(f"{name} must be {where}, got {shown[:40]}{'...' if len(shown) > 40 else ''}.")


def require_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int (not a bool, float or string) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {_got(value)}.{_hint(value)}")
    _check_range(name, value, low, high, False, False)
    return value


def require_number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                   low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a finite float (ints accepted; bools and strings not) within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {_got(value)}.{_hint(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {_got(value)}.")
    _check_range(name, number, low, high, low_open, high_open)
    return number


def require_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {_got(value)}.")
    return value


def require_optional_bool(name: str, value: Any) -> bool | None:
    return None if value is None else require_bool(name, value)


def require_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {_got(value)}.")
    return value


def require_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """A string among `choices`; an unknown one gets a "did you mean"."""
    choices = [str(c) for c in choices]
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be one of {', '.join(sorted(choices))}, got {_got(value)}.")
    if value not in choices:
        raise unknown_choice(name, value, choices)
    return value


def require_str_tuple(name: str, value: Any) -> tuple[str, ...]:
    """A list/tuple of strings as a tuple (a bare string is refused: it is not a list of one)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list of strings, got {_got(value)}. "
                          f"In YAML: {name.split('.')[-1]}: [a, b].")
    for v in value:
        if not isinstance(v, str):
            raise ConfigError(f"{name} must be a list of strings; it holds {_got(v)}.")
    return tuple(value)


def require_number_tuple(name: str, value: Any, lengths: Iterable[int]) -> tuple[float, ...]:
    """A list/tuple of finite numbers whose length is one of `lengths`."""
    lengths = tuple(lengths)
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list of {' or '.join(map(str, lengths))} numbers, got {_got(value)}.")
    if len(value) not in lengths:
        raise ConfigError(f"{name} must have {' or '.join(map(str, lengths))} values, got {len(value)}: "
                          f"{list(value)}.")
    return tuple(require_number(f"{name}[{i}]", v) for i, v in enumerate(value))


def require_mapping(name: str, value: Any) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a mapping of keys to values, got {_got(value)}.")
    return value


def check_keys(what: str, data: Any, valid: Iterable[str]) -> Mapping[Any, Any]:
    """`data` must be a mapping whose keys are all in `valid` (an unknown key gets a "did you mean")."""
    data = require_mapping(what, data)
    valid = sorted(valid)
    for k in data:
        if k not in valid:
            raise ConfigError(f'Unknown {what} key "{k}".{did_you_mean(str(k), valid)} '
                              f"Valid keys: {', '.join(valid)}.")
    return data
