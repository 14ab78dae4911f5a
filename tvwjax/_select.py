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


def _prefix_mask(scores: Array, sizes: Array | None, budget: Array | int) -> Array:
    """Keep the longest prefix of the (score desc, index asc) order whose size fits ``budget``.

    One sort of ``(-score, index[, size])`` plus a cumulative sum; the prefix is turned back
    into a mask by comparing every entry with the last kept (score, index) pair, which avoids
    a scatter (slow on the CPU).
    """
    flat = scores.reshape(-1).astype(jnp.float32)
    n = flat.shape[0]
    idx = jnp.arange(n, dtype=jnp.int32)
    if sizes is None:
        neg, sidx = jax.lax.sort((-flat, idx), num_keys=2)
        kept = jnp.clip(jnp.asarray(budget, jnp.int32), 0, n)
    else:
        z = sizes.reshape(-1).astype(jnp.int32)
        neg, sidx, sz = jax.lax.sort((-flat, idx, z), num_keys=2)
        kept = jnp.sum(jnp.cumsum(sz) <= budget, dtype=jnp.int32)
    last = jnp.maximum(kept - 1, 0)
    thr, thr_idx = -neg[last], sidx[last]
    keep = (flat > thr) | ((flat == thr) & (idx <= thr_idx))
    keep = keep & (kept > 0)
    if sizes is not None:
        keep = keep & (sizes.reshape(-1) > 0)
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
