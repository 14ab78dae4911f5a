"""Selection primitives shared by every pattern: ranking, top-k and budgeted selection.

All functions are pure, jit-able and accept a *traced* count or budget, so the same code
serves per-layer masks (static sparsity) and global-scope masks (per-leaf densities computed
inside the trace).

Tie rule (documented in the README): candidates are ranked by descending score; equal
scores are ranked by ascending flat index (row-major position), so the same input gives the
same mask on every run, under ``jit`` and eagerly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tvwjax.errors import ShapeError

Array = jax.Array


def count(density: Array | float, total: int) -> Array:
    """Number of kept items: ``round(density * total)`` (half up), clipped to ``[0, total]``."""
    if isinstance(density, float | int):
        return jnp.asarray(min(max(int(density * total + 0.5), 0), total), jnp.int32)
    k = jnp.floor(jnp.asarray(density, jnp.float32) * total + 0.5).astype(jnp.int32)
    return jnp.clip(k, 0, total)


def rank_desc(scores: Array, axis: int = -1) -> Array:
    """Rank of each entry along ``axis`` (0 = largest); ties go to the lower index."""
    order = jnp.argsort(-scores, axis=axis, stable=True)
    return jnp.argsort(order, axis=axis, stable=True)


def order_key(x: Array) -> Array:
    """A ``uint32`` key with the same order as the float32 values of ``x`` (NaN-free)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    key = jnp.where(bits >= 0, bits, bits ^ jnp.int32(0x7FFFFFFF))
    return jax.lax.bitcast_convert_type(key, jnp.uint32) ^ jnp.uint32(0x80000000)


def max_key_where(pred, n_bits: int = 32) -> Array:
    """Largest ``uint32`` key ``t`` with ``pred(t)`` true, for ``pred`` true at 0 and
    monotone (true up to some point, false after). Bisection: ``n_bits`` passes, no sort."""

    def body(_, lohi):
        lo, hi = lohi  # pred(lo) is true; every key above hi is false
        gap = hi - lo
        mid = lo + gap // jnp.uint32(2) + gap % jnp.uint32(2)  # ceil, no uint32 overflow
        ok = pred(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - jnp.uint32(1))

    lo, _ = jax.lax.fori_loop(0, n_bits + 1, body,
                              (jnp.uint32(0), jnp.uint32(0xFFFFFFFF)))
    return lo


def _prefix_mask(scores: Array, sizes: Array | None, budget: Array | int) -> Array:
    """Keep the longest prefix of the (score desc, index asc) order whose size fits ``budget``.

    No sort: the boundary score is found by bisection over the scores' ordered bit patterns
    (32 passes over the data, much faster than a sort of tens of millions of entries on the
    CPU), then ties at the boundary are taken in index order with a cumulative sum.
    """
    flat = scores.reshape(-1)
    key = order_key(flat)
    z = jnp.ones(flat.shape, jnp.int32) if sizes is None else sizes.reshape(-1).astype(jnp.int32)
    budget = jnp.asarray(budget, jnp.int32)
    total = jnp.sum(z)
    # t* = largest key whose ">= t" set overflows the budget (exists unless all fit).
    t = max_key_where(lambda t: jnp.sum(jnp.where(key >= t, z, 0)) > budget)
    above = key > t
    room = budget - jnp.sum(jnp.where(above, z, 0))
    tie = key == t
    keep = above | (tie & (jnp.cumsum(jnp.where(tie, z, 0)) <= room))
    keep = jnp.where(total <= budget, True, keep) & (z > 0)
    return keep.reshape(scores.shape)


def topk_mask(scores: Array, k: Array | int, axis: int | None = None) -> Array:
    """Boolean mask keeping the ``k`` largest scores (over all entries, or along ``axis``).

    ``k`` may be traced; with ``axis`` it may be an array broadcastable against the ranks.
    """
    if axis is None:
        return _prefix_mask(scores, None, k)
    return rank_desc(scores, axis=axis) < k


def budget_mask(scores: Array, sizes: Array, budget: Array | int) -> Array:
    """Keep units in descending score order while their cumulative size stays <= ``budget``.

    Units are given flat (1-D ``scores`` and ``sizes``). Units of size 0 are never kept.
    The kept units are a prefix of the ranking, so the result is deterministic and the kept
    size lies in ``(budget - max(size), budget]`` whenever enough units exist.
    """
    return _prefix_mask(scores, sizes, budget)


def nm_select(scores: jax.Array, n: int = 2, m: int = 4) -> jax.Array:
    """Boolean N:M mask along axis 0: the ``n`` largest scores of every ``m`` rows, per column.

    Ties are broken towards the lower row index. ``scores.shape[0]`` must be divisible by ``m``.
    """
    rows, cols = scores.shape
    if rows % m:
        raise ShapeError(f"N:M selection needs axis 0 ({rows}) divisible by m={m}")
    g = scores.reshape(rows // m, m, cols)
    # Rank of each entry in its group by pairwise comparisons (m*(m-1) elementwise ops,
    # much faster than a sort for small m): entries that beat it are larger, or equal and
    # earlier.
    keep = []
    for i in range(m):
        rank = jnp.zeros((rows // m, cols), jnp.int32)
        for j in range(m):
            if j != i:
                beats = g[:, j] >= g[:, i] if j < i else g[:, j] > g[:, i]
                rank = rank + beats.astype(jnp.int32)
        keep.append(rank < n)
    return jnp.stack(keep, axis=1).reshape(rows, cols)


def rms(x: Array, axis, count_: Array) -> Array:
    """Root mean square of ``x`` over ``axis`` with an explicit element count (0 -> 0)."""
    ss = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axis)
    return jnp.sqrt(ss / jnp.maximum(count_, 1))


def pad_to(x: Array, multiple: int, axis: int, value) -> Array:
    """Pad ``axis`` of ``x`` at the end with ``value`` up to a multiple of ``multiple``."""
    pad = (-x.shape[axis]) % multiple
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)
