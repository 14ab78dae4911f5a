"""Checks of a compressed weight's index tables against the layout contract (NumPy, vectorised).

Every compressed weight built from outside data (its constructor, ``replace``,
:func:`tvwjax.checkpoint.restore`, a pytree unflattened from aux data the library did not
check) goes through these helpers, so no table can make a kernel or a gather read outside a
buffer and no inconsistent table gives a silently wrong result. Tables are static NumPy
arrays, always concrete, so the checks are plain NumPy and cost ``O(table size)``.

Each helper raises :class:`~tvwjax.errors.FormatError` whose message names the format
(``where``), the table, what was expected and what arrived.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tvwjax import _validate as val
from tvwjax.errors import ConfigError, FormatError

#: Bits per packed N:M position (see :mod:`pallas_kernels.nm_codec`) and positions per byte.
_BITS, _PLANES = 2, 4


def static_int(value: Any, where: str, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer ``>= minimum`` (the check of
    :func:`tvwjax._validate.int_at_least`, raised as :class:`FormatError`)."""
    try:
        return val.int_at_least(value, f"{where}: {name}", minimum)
    except ConfigError as e:
        raise FormatError(str(e)) from None


def static_pair(value: Any, where: str, name: str) -> tuple[int, int]:
    """``value`` as a pair of positive ints (a dense shape, a block, an N:M pair)."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise FormatError(f"{where}: {name} must be a pair of positive integers, got {value!r}")
    return (static_int(value[0], where, f"{name}[0]"), static_int(value[1], where, f"{name}[1]"))


def nm_static(value: Any, where: str) -> tuple[int, int]:
    """An ``nm = (n, m)`` field: integers with ``1 <= n < m <= 4`` (2-bit positions)."""
    n, m = static_pair(value, where, "nm")
    if not n < m <= 4:
        raise FormatError(f"{where}: nm must satisfy 1 <= n < m <= 4, got {(n, m)}")
    return n, m


def table_array(value: Any, where: str, name: str) -> np.ndarray:
    """A concrete integer NumPy array from a table argument (a tracer is rejected)."""
    if val.is_traced(value):
        raise FormatError(f"{where}: {name} table must be a concrete (numpy) array, got a "
                          "traced value; index tables are static")
    a = np.asarray(value)
    if not np.issubdtype(a.dtype, np.integer):
        raise FormatError(f"{where}: {name} table must have an integer dtype, got {a.dtype}")
    return a


def fits_dtype(a: np.ndarray, dtype: np.dtype, where: str, name: str) -> None:
    """Raise if an integer table holds a value its contract dtype cannot represent."""
    if a.size == 0 or a.dtype == dtype:
        return
    info = np.iinfo(dtype)
    lo, hi = int(a.min()), int(a.max())
    if lo < info.min or hi > info.max:
        bad = lo if lo < info.min else hi
        raise FormatError(f"{where}: {name} table holds {bad}, which does not fit its dtype "
                          f"{np.dtype(dtype).name}")


def shape_is(a: np.ndarray, expected: tuple[int, ...], where: str, name: str,
             why: str = "") -> None:
    """Raise unless ``a.shape == expected``."""
    if tuple(a.shape) != tuple(expected):
        raise FormatError(f"{where}: {name} table has shape {tuple(a.shape)}, expected "
                          f"{tuple(expected)}{why}")


def ndim_is(a: np.ndarray, ndim: int, where: str, name: str, layout: str) -> None:
    """Raise unless ``a`` has rank ``ndim`` (``layout`` names the axes, e.g. ``(T, Kp)``)."""
    if a.ndim != ndim:
        raise FormatError(f"{where}: {name} table must be {ndim}-D {layout}, got shape "
                          f"{tuple(a.shape)}")


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def counts_in_range(counts: np.ndarray, kp: int, where: str) -> None:
    """``0 <= counts[t] <= Kp`` for every tile."""
    bad = (counts < 0) | (counts > kp)
    if bad.any():
        (t,) = _first(bad)
        raise FormatError(f"{where}: counts table has {int(counts[t])} at tile {t}, expected "
                          f"0 <= count <= Kp={kp} (the padded rows per tile)")


def rows_follow_contract(rows: np.ndarray, counts: np.ndarray, k: int, where: str) -> None:
    """Kept rows ``[0, k_t)`` of each tile: in ``[0, K)``, strictly increasing; padding rows 0."""
    kept = np.arange(rows.shape[1])[None, :] < counts[:, None]
    bad = kept & ((rows < 0) | (rows >= k))
    if bad.any():
        t, j = _first(bad)
        raise FormatError(f"{where}: rows table has index {int(rows[t, j])} at tile {t}, "
                          f"compact row {j}, expected 0 <= row < K={k}")
    bad = ~kept & (rows != 0)
    if bad.any():
        t, j = _first(bad)
        raise FormatError(f"{where}: rows table has {int(rows[t, j])} at tile {t}, padding "
                          f"row {j} (count {int(counts[t])}), expected 0 (padding rows point "
                          "at row 0)")
    bad = kept[:, 1:] & (rows[:, 1:] <= rows[:, :-1])
    if bad.any():
        t, j = _first(bad)
        raise FormatError(f"{where}: rows table of tile {t} is not strictly increasing: "
                          f"{int(rows[t, j])} then {int(rows[t, j + 1])} at compact rows "
                          f"{j}..{j + 1}, expected kept rows sorted and unique")


def cols_follow_contract(cols: np.ndarray, n: int, where: str) -> None:
    """Tile columns in ``[0, N]`` (``N`` = padding), real ones first in each tile, and the
    real columns of all tiles (in tile order) strictly increasing, so no column is in two
    tiles."""
    bad = (cols < 0) | (cols > n)
    if bad.any():
        t, j = _first(bad)
        raise FormatError(f"{where}: cols table has index {int(cols[t, j])} at tile {t}, "
                          f"column {j}, expected 0 <= col < N={n} (or N for padding)")
    real = cols < n
    bad = real[:, 1:] & ~real[:, :-1]
    if bad.any():
        t, j = _first(bad)
        raise FormatError(f"{where}: cols table of tile {t} has column {int(cols[t, j + 1])} "
                          f"after a padding column ({n}) at position {j + 1}, expected the "
                          "real columns first")
    flat = cols[real]
    bad = np.flatnonzero(np.diff(flat) <= 0)
    if bad.size:
        i = int(bad[0])
        raise FormatError(f"{where}: cols table is not strictly increasing over the tiles: "
                          f"column {int(flat[i])} then {int(flat[i + 1])}, expected every "
                          "output column in at most one tile, in order")


def positions_follow_contract(meta: np.ndarray, v_rows: int, n: int, m: int,
                              where: str) -> None:
    """The packed N:M positions of ``meta`` ``(..., ceil(V / 4), C)``: each of the ``V``
    value rows' positions is ``< m``, and the ``n`` positions of a group are distinct."""
    shifts = (np.arange(_PLANES, dtype=np.uint8) * _BITS)[:, None]
    planes = (meta[..., :, None, :] >> shifts) & np.uint8(3)      # (..., B, 4, C)
    idx = planes.reshape(*meta.shape[:-2], meta.shape[-2] * _PLANES,
                         meta.shape[-1])[..., :v_rows, :]
    bad = idx >= m
    if bad.any():
        *lead, r, c = _first(bad)
        at = f"tile {lead[0]}, " if lead else ""
        raise FormatError(f"{where}: meta table holds position {int(idx[(*lead, r, c)])} at "
                          f"{at}value row {r}, column {c}, expected < m={m}")
    if n < 2:
        return
    groups = np.sort(idx.reshape(*idx.shape[:-2], v_rows // n, n, idx.shape[-1]), axis=-2)
    bad = (groups[..., 1:, :] == groups[..., :-1, :]).any(axis=-2)
    if bad.any():
        *lead, g, c = _first(bad)
        at = f"tile {lead[0]}, " if lead else ""
        raise FormatError(f"{where}: meta table repeats a position in {at}group {g} (value "
                          f"rows {g * n}..{g * n + n - 1}), column {c}, expected the {n} "
                          f"positions of a group distinct")


__all__ = ["cols_follow_contract", "counts_in_range", "fits_dtype", "ndim_is", "nm_static",
           "positions_follow_contract", "rows_follow_contract", "shape_is", "static_int",
           "static_pair", "table_array"]
