"""Independent validators: does a mask really follow its pattern?

Written separately from the builders in :mod:`tvwjax.patterns` (plain NumPy, loops over
tiles and groups, no shared helpers), so a bug in a builder is not mirrored here. Each
checker inspects only the mask (and, optionally, the sparsity it should have) and raises
:class:`~tvwjax.errors.PatternViolationError` describing the first violation found.

For tile-wise masks the column tiling is re-derived from the mask itself: TW-1D tiles are
consecutive groups of ``tile`` columns; TW-2D tiles are the columns holding any kept entry,
in order, in groups of ``tile`` (a tile with no kept row at all removes exactly ``tile``
columns, so later tiles keep their grouping).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tvwjax import _validate as val
from tvwjax._tree import leaves_with_paths, view_of
from tvwjax.errors import ConfigError, PatternViolationError, ShapeError
from tvwjax.patterns import BW, EW, NM, TEW, TVW, TW, VW, Pattern


def _kept(s: float, total: int) -> int:
    """The documented counting rule, in NumPy float32: ``d = 1 - s``, keep
    ``round_half_up(d * total)`` (each step one float32 operation), at least 1 if ``d > 0``."""
    d = np.float32(1.0) - np.float32(s)
    x = d * np.float32(total)  # one correctly rounded float32 product
    k = int(np.floor(np.float64(x) + 0.5))  # exact in float64
    return min(max(k, 1 if d > 0 else 0), total)


def _fail(name: str, msg: str) -> None:
    raise PatternViolationError(f"{name}: {msg}")


def _chunks(m: np.ndarray, tile: int, fixed: bool) -> list[np.ndarray]:
    """Column index groups forming the tiles of a TW-style mask."""
    n = m.shape[1]
    cols = np.arange(n) if fixed else np.flatnonzero(m.any(axis=0))
    return [cols[i:i + tile] for i in range(0, len(cols), tile)]


def _check_ew(m, p, s, name):
    if s is not None:
        want = _kept(s, m.size)
        if int(m.sum()) != want:
            _fail(name, f"EW at sparsity {s} keeps {want} entries, mask keeps {int(m.sum())}")


def _check_bw(m, p: BW, s, name):
    k, n = m.shape
    kept_blocks = 0
    for i in range(0, k, p.rows):
        for j in range(0, n, p.cols):
            blk = m[i:i + p.rows, j:j + p.cols]
            if blk.any() and not blk.all():
                _fail(name, f"block at ({i}, {j}) of size {blk.shape} is partially kept")
            kept_blocks += bool(blk.all())
    if s is not None and s > 0:
        budget, kept = _kept(s, m.size), int(m.sum())
        # Within one block of the budget; a budget smaller than every block keeps one block.
        if not (budget - p.rows * p.cols < kept <= budget or kept_blocks == 1):
            _fail(name, f"BW keeps {kept} entries, expected within one block of {budget}")


def _check_vw(m, p: VW, s, name):
    k, n = m.shape
    counts = []
    for i in range(0, k, p.length):
        seg = m[i:i + p.length]
        c = seg.sum(axis=0)
        if s is not None:
            want = seg.shape[0] if s == 0 else _kept(s, seg.shape[0])
            bad = np.flatnonzero(c != want)
            if bad.size:
                _fail(name, f"vector at rows {i}:{i + seg.shape[0]}, column {bad[0]} keeps "
                             f"{c[bad[0]]}, expected {want}")
        elif seg.shape[0] == p.length:
            counts.append(c)
    if counts:
        allc = np.concatenate(counts)
        if np.any(allc != allc[0]):
            j = int(np.flatnonzero(allc != allc[0])[0])
            _fail(name, f"vectors keep different counts ({allc[0]} vs {allc[j]})")


def _check_groups(block: np.ndarray, n: int, m: int, name: str, what: str) -> None:
    rows = block.shape[0]
    if rows % m:
        _fail(name, f"{what} has {rows} rows, not a multiple of m={m}")
    for g in range(0, rows, m):
        c = block[g:g + m].sum(axis=0)
        bad = np.flatnonzero(c != n)
        if bad.size:
            _fail(name, f"{what}: group at rows {g}:{g + m}, column {bad[0]} keeps "
                         f"{int(c[bad[0]])} of {m}, expected {n}")


def _check_nm(m, p: NM, s, name):
    if m.all() and (s is None or s == 0):
        return
    if m.shape[0] % p.m:
        _fail(name, f"K={m.shape[0]} is not divisible by m={p.m}")
    _check_groups(m, p.n, p.m, name, f"{p.n}:{p.m} mask")


def _tile_rows(m, p: TW, name):
    """Yield (tile index, columns, kept-row indices) after checking each tile is TW."""
    for t, cols in enumerate(_chunks(m, p.tile, p.column_share == 0)):
        sub = m[:, cols]
        yield t, cols, sub


def _check_tw(m, p: TW, s, name):
    kept_total = 0
    n_tiles = 0
    floor_rows = min(m.shape[0], -(-p.min_rows // p.row_block) * p.row_block)
    floor_total = 0  # what the min_rows guarantee alone keeps
    for t, cols, sub in _tile_rows(m, p, name):
        n_tiles += 1
        floor_total += floor_rows * len(cols)
        full, empty = sub.all(axis=1), ~sub.any(axis=1)
        bad = np.flatnonzero(~(full | empty))
        if bad.size:
            _fail(name, f"tile {t} (columns {cols[0]}..{cols[-1]}): row {bad[0]} is partially "
                         "kept; a row segment must be kept or pruned whole")
        if full.sum() % p.row_block:
            _fail(name, f"tile {t}: keeps {int(full.sum())} rows, not a multiple of "
                         f"row_block={p.row_block}")
        if s is not None and s > 0 and full.sum() < floor_rows:
            _fail(name, f"tile {t}: keeps {int(full.sum())} rows, below min_rows="
                         f"{p.min_rows} (every tile keeps at least {floor_rows})")
        kept_total += int(sub.sum())
    if s is not None and s > 0:
        budget = max(_kept(s, m.size), floor_total)
        slack = p.tile * (1 + n_tiles * (p.row_block // 2 + (p.row_block > 1)))
        if abs(kept_total - budget) > slack:
            _fail(name, f"TW keeps {kept_total} entries, expected about {budget} "
                         f"(+/- {slack})")


def _check_tew(m, p: TEW, s, name):
    _check_ew(m, EW(), s, name)


def _groupable(sub: np.ndarray, rows: np.ndarray, n_kept: int, n: int, m: int) -> bool:
    """Can the nonzero ``rows`` plus ``n_kept - len(rows)`` all-zero kept rows be cut, in
    order, into groups of ``m`` with exactly ``n`` kept entries per column? (Dynamic
    programming over (nonzero rows used, zero rows inserted).)"""
    zeros = n_kept - rows.size
    reach = {(0, 0)}
    for _ in range(n_kept // m):
        nxt = set()
        for i, z in reach:
            for j in range(0, m + 1):
                if i + j > rows.size or z + m - j > zeros:
                    continue
                if np.all(sub[rows[i:i + j]].sum(axis=0) == n):
                    nxt.add((i + j, z + m - j))
        reach = nxt
        if not reach:
            return False
    return (rows.size, zeros) in reach


def _check_tvw(m, p: TVW, s, name):
    if m.all() and (s is None or s == 0):
        return
    kept_total = 0
    for t, cols, sub in _tile_rows(m, p, name):
        what = f"tile {t} (columns {cols[0]}..{cols[-1]})"
        c = sub.sum(axis=0)
        if np.any(c != c[0]):
            j = int(np.flatnonzero(c != c[0])[0])
            _fail(name, f"{what}: columns keep different counts ({int(c[0])} in column "
                         f"{cols[0]}, {int(c[j])} in column {cols[j]}); {p.n}:{p.m} inside a "
                         "tile keeps the same number in every column")
        if (int(c[0]) * p.m) % p.n:
            _fail(name, f"{what}: {int(c[0])} kept per column is not a multiple of n={p.n}")
        n_kept = int(c[0]) * p.m // p.n
        if n_kept % p.row_block:
            _fail(name, f"{what}: {n_kept} kept rows, not a multiple of "
                         f"row_block={p.row_block}")
        rows = np.flatnonzero(sub.any(axis=1))
        if rows.size > n_kept or not _groupable(sub, rows, n_kept, p.n, p.m):
            _fail(name, f"{what}: the kept rows cannot be grouped in order into "
                         f"{p.n}:{p.m} groups of {p.m} rows")
        kept_total += int(sub.sum())
    if s is not None and s > 0:
        budget = _kept(s, m.size)
        n_tiles = -(-m.shape[1] // p.tile)
        slack = p.tile * (2 + n_tiles * p.row_block)
        if abs(kept_total - budget) > slack:
            _fail(name, f"TVW keeps {kept_total} entries, expected about {budget} "
                         f"(+/- {slack})")


# Most specific class first: a TVW is a TW, a TEW is a TW.
_CHECKERS = {TVW: _check_tvw, TEW: _check_tew, TW: _check_tw, NM: _check_nm, VW: _check_vw,
             BW: _check_bw, EW: _check_ew}


def _checker(pattern: Pattern):
    for cls in type(pattern).__mro__:
        if cls in _CHECKERS:
            return _CHECKERS[cls]
    return None


def check(mask: Any, pattern: Pattern, sparsity: float | None = None,
          name: str = "mask", n_in: int | None = None) -> None:
    """Raise :class:`PatternViolationError` unless ``mask`` follows ``pattern``.

    Args:
      mask: boolean array (``ndim >= 2``), checked in its GEMM view
        ``(prod(shape[:n_in]), prod(shape[n_in:]))``.
      pattern: the pattern it should follow.
      sparsity: if given, also check the kept count the pattern implies at this sparsity
        (exact for EW, VW, N:M and TEW; within the pattern's granularity for BW, TW, TVW).
      name: what the error message calls the mask (e.g. a leaf path).
      n_in: leading contracted axes of the kernel (default ``ndim - 1``; see
        :func:`tvwjax.gemm_views`).

    >>> import jax.numpy as jnp, tvwjax
    >>> check(jnp.array([[True], [False], [True], [False]]), tvwjax.NM(), 0.5)
    >>> try:
    ...     check(jnp.array([[True], [True], [True], [False]]), tvwjax.NM(), 0.5)
    ... except tvwjax.PatternViolationError as e:
    ...     print(e)
    mask: 2:4 mask: group at rows 0:4, column 0 keeps 3 of 4, expected 2
    """
    if not isinstance(pattern, Pattern):
        raise ConfigError(f"{name}: pattern must be a tvwjax Pattern, got {pattern!r}")
    if sparsity is not None:
        sparsity = val.sparsity(sparsity, f"{name}: sparsity")
        if val.is_traced(sparsity):
            raise ConfigError(f"{name}: check runs eagerly; sparsity must be a number, got a "
                              "traced value")
    if val.is_traced(mask):
        raise ConfigError(f"{name}: check runs eagerly on concrete masks (outside jax.jit)")
    m = np.asarray(mask)
    if m.ndim < 2:
        raise ShapeError(f"{name}: a mask must have ndim >= 2, got shape {m.shape}")
    m = np.asarray(val.bool_mask(m, name))  # bool, or exactly 0/1 (DTypeError otherwise)
    n_in = m.ndim - 1 if n_in is None else n_in
    if not 1 <= n_in < m.ndim:
        raise ConfigError(f"{name}: n_in must be in [1, {m.ndim - 1}] for a mask of shape "
                          f"{m.shape}, got {n_in!r}")
    m = m.reshape(int(np.prod(m.shape[:n_in])), -1)
    if sparsity == 0 or (sparsity is None and m.all()):
        if not m.all():
            _fail(name, f"sparsity 0 means dense, but {int((~m).sum())} entries are pruned")
        return
    fn = _checker(pattern)
    if fn is None:
        raise PatternViolationError(f"{name}: no checker for pattern {pattern!r}")
    fn(m, pattern, sparsity, name)


def check_tree(mask_tree: Any, pattern: Pattern, sparsity: float | None = None, *,
               views: Any = None) -> None:
    """:func:`check` every non-``None`` mask of a pytree in its GEMM view, naming the
    failing leaf's path (``views`` as in :func:`tvwjax.masks`)."""
    for path, m in leaves_with_paths(mask_tree)[0]:
        n_in, reason = view_of(path, tuple(np.shape(m)), views)
        if n_in is None:
            raise ConfigError(f"{path}: {reason}")
        check(m, pattern, sparsity, name=path, n_in=n_in)


__all__ = ["check", "check_tree"]
