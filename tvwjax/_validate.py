"""The one validation layer: every public entry point checks its arguments through here.

Each helper checks one kind of value the same way whatever its Python type (a Python
number, a NumPy scalar or 0-d array, a concrete JAX scalar) and raises a
:mod:`tvwjax.errors` exception whose message starts with the parameter name or leaf path and
says what was expected and what arrived. Traced values cannot be inspected; the helpers pass
them through unchanged and the callers document what happens to them under ``jit``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvwjax.errors import ConfigError, DTypeError, ScoreError

Array = jax.Array


def is_traced(x: Any) -> bool:
    """True for a JAX tracer (a value inside ``jit`` / ``grad`` / ``vmap``)."""
    return isinstance(x, jax.core.Tracer)


def round_up(x: int, multiple: int) -> int:
    """``x`` rounded up to a multiple of ``multiple`` (``round_up(0, m) == 0``)."""
    return -(-int(x) // int(multiple)) * int(multiple)


def positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` if it is an integer ``>= 1`` (not a bool), else ConfigError."""
    return int_at_least(value, name, 1)


def int_at_least(value: Any, name: str, minimum: int) -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum``, else ConfigError.

    ``4``, ``np.int64(4)``, ``np.array(4)`` and ``jnp.int32(4)`` are read alike. Bools,
    floats (even ``4.0``) and traced values are rejected: these are static sizes.
    """
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if is_traced(value):
        raise ConfigError(f"{name} must be {what} known before tracing (a static size), got "
                          "a traced value")
    if (isinstance(value, np.ndarray | jax.Array) and np.ndim(value) == 0
            and jnp.issubdtype(value.dtype, jnp.integer)):
        value = int(np.asarray(value))
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return int(value)


def int_field(obj: Any, field: str, minimum: int, owner: str) -> int:
    """Check the integer field ``field`` of the frozen dataclass ``obj`` with
    :func:`int_at_least` and store it back as a Python ``int`` (so ``jnp.int32(4)`` and
    ``4`` give equal, hashable objects)."""
    v = int_at_least(getattr(obj, field), f"{owner}: {field}", minimum)
    object.__setattr__(obj, field, v)
    return v


def number(value: Any, name: str) -> float:
    """A concrete real number (Python, NumPy or concrete JAX scalar) as a Python float;
    bools, ``None``, arrays, strings and traced values raise :class:`ConfigError`."""
    if is_traced(value):
        raise ConfigError(f"{name} must be a number known before tracing, got a traced value")
    return _scalar(value, name, "a number")


def _scalar(value: Any, name: str, what: str) -> Any:
    """A concrete number as a Python float, a traced scalar unchanged; else ConfigError."""
    if is_traced(value):
        if jnp.ndim(value) != 0:
            raise ConfigError(f"{name} must be a scalar {what}, got a traced array of shape "
                              f"{jnp.shape(value)}")
        return value
    if isinstance(value, bool | np.bool_) or value is None:
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    if isinstance(value, np.ndarray | jax.Array | np.generic):
        if np.ndim(value) != 0:
            raise ConfigError(f"{name} must be a scalar {what}, got an array of shape "
                              f"{np.shape(value)}")
        if not (jnp.issubdtype(value.dtype, jnp.floating)
                or jnp.issubdtype(value.dtype, jnp.integer)):
            raise ConfigError(f"{name} must be {what}, got dtype {value.dtype}")
        return float(np.asarray(value))
    if isinstance(value, int | float):
        return float(value)
    raise ConfigError(f"{name} must be {what}, got {type(value).__name__} {value!r}")


def sparsity(value: Any, name: str = "sparsity", *, upper_inclusive: bool = False
             ) -> float | Array:
    """Check a sparsity: a number in ``[0, 1)`` (``[0, 1]`` with ``upper_inclusive``).

    Python, NumPy and concrete JAX scalars are checked alike and returned as a Python float;
    a traced scalar is returned unchanged (its range cannot be checked under ``jit``).
    """
    v = _scalar(value, name, "a number in [0, 1)")
    if is_traced(v):
        return v
    ok = 0.0 <= v <= 1.0 if upper_inclusive else 0.0 <= v < 1.0
    if not math.isfinite(v) or not ok:
        rng = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ConfigError(f"{name} must be in {rng}, got {v!r}")
    return v


def nm_pair(n: Any, m: Any, name: str, *, max_m: int | None = None) -> tuple[int, int]:
    """Check an N:M pair: integers ``1 <= n < m`` (and ``m <= max_m`` when given)."""
    n = positive_int(n, f"{name}: n")
    m = positive_int(m, f"{name}: m")
    if n >= m:
        raise ConfigError(f"{name}: n must be smaller than m, got n={n}, m={m}")
    if max_m is not None and m > max_m:
        raise ConfigError(f"{name}: m must be at most {max_m} (2-bit position indices), "
                          f"got m={m}")
    return n, m


def finite_nonnegative(scores: Any, name: str) -> None:
    """Raise :class:`ScoreError` for NaN/Inf or negative concrete scores (traced: skipped)."""
    if is_traced(scores):
        return
    s = np.asarray(scores, np.float32)
    finite = np.isfinite(s)
    if not finite.all():
        raise ScoreError(f"{name}: scores contain {int(s.size - finite.sum())} NaN or Inf "
                         "value(s); expected finite, non-negative scores")
    if (s < 0).any():
        raise ScoreError(f"{name}: scores must be non-negative (use |w| or a squared score), "
                         f"got minimum {float(s.min())!r}")


def bool_mask(mask: Any, name: str) -> Any:
    """A keep-mask as a boolean array.

    Accepts bool arrays, and integer or floating arrays holding only 0 and 1 (checked when
    concrete). A traced non-boolean mask must have an integer dtype (compared ``!= 0``);
    anything else raises :class:`DTypeError` rather than reading 0.3 as True.
    Concrete NumPy input stays NumPy; JAX input stays JAX.
    """
    dtype = np.dtype(getattr(mask, "dtype", np.asarray(mask).dtype))
    if dtype == np.bool_:
        return mask
    numeric = jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    if not numeric:
        raise DTypeError(f"{name}: a mask must be boolean (or 0/1), got dtype {dtype}")
    if is_traced(mask):
        if not jnp.issubdtype(dtype, jnp.integer):
            raise DTypeError(f"{name}: a traced mask must be boolean or integer 0/1, got "
                             f"dtype {dtype}")
        return mask != 0
    values = np.asarray(mask)
    if not np.isin(values, (0, 1)).all():
        bad = values[~np.isin(values, (0, 1))].reshape(-1)[0]
        raise DTypeError(f"{name}: a mask must be boolean (or hold only 0 and 1), got dtype "
                         f"{dtype} with value {bad!r}")
    return values.astype(bool) if isinstance(mask, np.ndarray) else jnp.asarray(mask) != 0


def flag(value: Any, name: str) -> bool:
    """``value`` as a Python bool if it is a bool (Python, NumPy, or a concrete 0-d bool
    array), else ConfigError (``"no"`` or ``0`` must not pass as a truth value)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if (isinstance(value, np.ndarray | jax.Array) and not is_traced(value)
            and np.ndim(value) == 0 and value.dtype == np.bool_):
        return bool(np.asarray(value))
    raise ConfigError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of the strings ``choices``, else ConfigError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def mapping_or_none(value: Any, name: str) -> Mapping | None:
    """``value`` if it is ``None`` or a mapping (``dict``, ``FrozenDict``), else ConfigError."""
    if value is None or isinstance(value, Mapping):
        return value
    raise ConfigError(f"{name} must be a mapping {{path or glob: value}} or None, got "
                      f"{type(value).__name__} {value!r}")


def array(value: Any, name: str) -> Array:
    """``value`` as a JAX array if it is array-like, else a :mod:`tvwjax.errors` exception.

    JAX arrays and tracers pass unchanged; NumPy arrays and scalars, Python numbers and
    nested sequences of numbers are converted with ``jnp.asarray`` (so NumPy input behaves
    as JAX input does). ``None``, strings, mappings and other objects raise
    :class:`ConfigError`; arrays of a non-numeric dtype (strings, objects) raise
    :class:`DTypeError`. The dtype is not otherwise checked here.
    """
    if isinstance(value, jax.Array):
        return value
    if value is None or isinstance(value, str | bytes | Mapping):
        raise ConfigError(f"{name} must be an array, got {type(value).__name__} "
                          f"{_short_repr(value)}")
    if not isinstance(value, np.ndarray | np.generic | int | float | complex | list | tuple):
        if not (hasattr(value, "__array__") or hasattr(value, "__jax_array__")):
            raise ConfigError(f"{name} must be an array, got {type(value).__name__}")
    try:
        host = value if hasattr(value, "__jax_array__") else np.asarray(value)
    except (TypeError, ValueError):  # ragged nested lists, unconvertible objects
        raise ConfigError(f"{name} must be an array, got a {type(value).__name__} that NumPy "
                          "cannot read as one (ragged nested sequences?)") from None
    dtype = np.dtype(getattr(host, "dtype", np.float32))
    if not (dtype == np.bool_ or jnp.issubdtype(dtype, jnp.number)):
        raise DTypeError(f"{name} must be a numeric array, got dtype {dtype}")
    return jnp.asarray(host)


def _short_repr(value: Any, limit: int = 40) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[:limit - 3] + "..."


__all__ = ["array", "bool_mask", "choice", "finite_nonnegative", "flag", "int_at_least",
           "int_field", "is_traced", "mapping_or_none", "nm_pair", "number", "positive_int",
           "round_up", "sparsity"]
