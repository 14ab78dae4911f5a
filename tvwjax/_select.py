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
import numpy as np

from tvwjax.errors import ShapeError

Array = jax.Array


#: The largest float32 below 1: a traced sparsity is clipped to it (every leaf keeps a unit).
BELOW_ONE = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


def count(density: Array | float, total) -> Array:
    """Number of kept items of ``total`` at ``density``: the documented counting rule.

    ``k = round_half_up(float32(density) * float32(total))``, clipped to ``[0, total]``, and
    at least 1 when ``density > 0`` (a leaf, vector or tile that is pruned at all keeps a
    unit). The product and the rounding are single float32 operations (``lax.round``, no
    multiply-add that a compiler could fuse), so the count is bit-identical whether
    ``density`` is a constant folded at trace time or a traced value, eagerly or under
    ``jit``. ``total`` may be an int or an integer array (elementwise counts).
    """
    total_i = jnp.asarray(total, jnp.int32)
    d = jnp.asarray(density, jnp.float32)
    x = d * jnp.asarray(np.asarray(total, np.float32))
    k = jax.lax.round(x, jax.lax.RoundingMethod.AWAY_FROM_ZERO).astype(jnp.int32)
    k = jnp.where(d > 0, jnp.maximum(k, 1), 0)
    return jnp.clip(k, 0, total_i)


def rank_desc(scores: Array, axis: int = -1) -> Array:
    """Rank of each entry along ``axis`` (0 = largest); ties go to the lower index."""
    order = jnp.argsort(-scores, axis=axis, stable=True)
    return jnp.argsort(order, axis=axis, stable=True)


def order_key(x: Array) -> Array:
    """A ``uint32`` key with the same order as the float32 values of ``x`` (NaN-free);
    ``-0.0`` and ``+0.0`` get the same key."""
    x = x.astype(jnp.float32)
    x = jnp.where(x == 0, jnp.float32(0), x)  # -0.0 and +0.0 are one score (the tie rule)
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
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
    # A positive budget smaller than the best unit still keeps that unit (a leaf pruned at
    # a sparsity below 1 is never emptied): the first unit in (score desc, index asc) order.
    best = jnp.argmax(jnp.where(z > 0, key, jnp.uint32(0)))
    first = (jnp.arange(flat.size) == best) & (z > 0)
    keep = jnp.where((budget > 0) & ~jnp.any(keep), first, keep)
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
    size lies in ``(budget - max(size), budget]`` whenever enough units exist; a positive
    budget smaller than the best unit keeps that one unit.
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
