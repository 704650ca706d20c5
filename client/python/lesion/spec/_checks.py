"""Checks of the values a builder is given: each returns the value as the spec's proto3 JSON holds it
(an int, a float, an upper-case enum name) or raises ``ValueError`` naming the field and the valid choices."""

from __future__ import annotations

import numpy as np


def _choice(what, value, choices):
    """Case-insensitive enum choice -> the proto's enum value name (upper case)."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{what}: unknown value {value!r}; valid: {', '.join(choices)}")
    return value.upper()


def _index(what, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what}: expected a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{what}: must be >= 0, got {value}")
    return int(value)


def _indices(what, values, allow_empty=True):
    if values is None:
        values = []
    if isinstance(values, (int, np.integer)):
        values = [values]
    values = [
        _index(f"{what}[{i}]", v)
        for i, v in enumerate(np.asarray(values).ravel().tolist() if isinstance(values, np.ndarray) else values)
    ]
    if not values and not allow_empty:
        raise ValueError(f"{what}: must not be empty")
    return values


def _number(what, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what}: expected a number, got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{what}: must be finite, got {value}")
    return value


def _opt_number(what, value):
    return None if value is None else _number(what, value)


def _opt_count(what, value):
    return None if value is None else _index(what, value)


def _numbers(what, values):
    if values is None:
        return []
    if isinstance(values, np.ndarray):
        values = values.ravel().tolist()
    elif isinstance(values, (int, float, np.integer, np.floating)) and not isinstance(values, (bool, np.bool_)):
        values = [values]
    return [_number(f"{what}[{i}]", v) for i, v in enumerate(values)]


def _floats(what, values):
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{what}: must not be empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: must be finite")
    return [float(v) for v in arr.astype(np.float32)]  # the proto field is float


def _drop_none(d):
    return {k: v for k, v in d.items() if v is not None}


def _enum_name(enum, value):
    return enum.Name(value).lower()
