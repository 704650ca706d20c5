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


MAX_MAGNITUDE = 1e15  # lesiond refuses larger numbers in an intervention (docs/spec.md)


def _array(what, values):
    """A list, tuple, numpy array or torch tensor (any device, dtype or grad) -> a float64 numpy array."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor, without importing torch
        values = values.detach().cpu()
        if not values.dtype.is_floating_point or values.dtype.itemsize < 4:  # bfloat16 has no numpy dtype
            values = values.double()
        values = values.numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: expected numbers (a list, a numpy array or a torch tensor): {e}") from None


def _vector(what, values, max_ndim=2):
    """A 1-D (or, up to ``max_ndim``, 2-D: one row each) array-like of finite numbers of at most
    ``MAX_MAGNITUDE`` -> (the numbers flattened row-major as float32 values in Python floats, the
    number of rows: 1 for a 1-D array)."""
    arr = _array(what, values)
    if arr.ndim == 0 or arr.ndim > max_ndim:
        shape = "1-D" if max_ndim == 1 else "1-D or 2-D (one row per position)"
        raise ValueError(f"{what}: expected a {shape} array of numbers, got shape {list(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{what}: must not be empty")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        raise ValueError(f"{what}: must be finite, got {arr[i]} at {list(i) if len(i) > 1 else i[0]}")
    big = np.abs(arr) > MAX_MAGNITUDE
    if big.any():
        i = tuple(int(k) for k in np.argwhere(big)[0])
        raise ValueError(f"{what}: at most {MAX_MAGNITUDE:g} in magnitude, got {arr[i]:g}")
    rows = 1 if arr.ndim == 1 else arr.shape[0]
    return [float(v) for v in arr.ravel(order="C").astype(np.float32)], rows


def _drop_none(d):
    return {k: v for k, v in d.items() if v is not None}


def _enum_name(enum, value):
    return enum.Name(value).lower()
