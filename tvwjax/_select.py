"""Selection primitives shared by every pattern: ranking, top-k and budgeted selection.

All functions are pure, jit-able and accept a *traced* count or budget, so the same code
serves per-layer masks (static sparsity) and global-scope masks (per-leaf densities computed
inside the trace).

Tie rule (documented in the README): candidates are ranked by descending score; equal
scores are ranked by ascending flat index (row-major position), so the same input gives the
same mask on every run, under ``jit`` and eagerly.
"""

from __future__ import annotations

import math

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


def max_key_where(pred, n_bits: int = 32, shape: tuple[int, ...] = ()) -> Array:
    """Largest ``uint32`` key ``t < 2**n_bits`` with ``pred(t)`` true, for ``pred`` true at 0
    and monotone (true up to some point, false after). Bisection: ``n_bits + 1`` passes, no
    sort. With ``shape``, independent bisections side by side: ``pred`` maps a ``shape``
    array of keys to a ``shape`` array of bools, and the result has that shape."""

    def body(_, lohi):
        lo, hi = lohi  # pred(lo) is true; every key above hi is false
        gap = hi - lo
        mid = lo + gap // jnp.uint32(2) + gap % jnp.uint32(2)  # ceil, no uint32 overflow
        ok = pred(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - jnp.uint32(1))

    top = jnp.full(shape, 0xFFFFFFFF if n_bits >= 32 else (1 << n_bits) - 1, jnp.uint32)
    lo, _ = jax.lax.fori_loop(0, n_bits + 1, body, (jnp.zeros(shape, jnp.uint32), top))
    return lo


def from_key(key: Array) -> Array:
    """The float32 value of an :func:`order_key` (its inverse, up to the sign of zero)."""
    k = jax.lax.bitcast_convert_type(key ^ jnp.uint32(0x80000000), jnp.int32)
    bits = jnp.where(k >= 0, k, k ^ jnp.int32(0x7FFFFFFF))
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


#: Entries per narrow (8- or 16-bit) partial sum: a sum over at most 32 entries of the
#: minor axis is fused with the elementwise work that feeds it (XLA:CPU materialises the
#: input of a wider or 32-bit integer reduction), so counting never copies the weights.
_CHUNK = 32


def _chunked_sum(x: Array, axes: tuple[int, ...], narrow, wide, op=jnp.sum) -> Array:
    """``op`` (``jnp.sum`` or ``jnp.max``) of the integer ``x`` over ``axes`` (ascending,
    ``keepdims``-free): first over chunks of :data:`_CHUNK` entries of the last reduced axis
    in dtype ``narrow`` (the caller guarantees no overflow), then over the partials in
    ``wide``."""
    def reduce(v, axis, dtype):
        return op(v, axis=axis, dtype=dtype) if op is jnp.sum else op(v, axis=axis).astype(dtype)

    last = axes[-1]
    if x.shape[last] % _CHUNK or x.shape[last] <= _CHUNK:
        return reduce(x, axes, wide)
    shape = x.shape[:last] + (x.shape[last] // _CHUNK, _CHUNK) + x.shape[last + 1:]
    sharding = jax.typeof(x).sharding  # explicit mesh axes: the chunks keep the axis' split
    spec = getattr(sharding, "spec", None)
    out = None
    if spec is not None and any(p is not None for p in spec):
        spec = tuple(spec) + (None,) * (x.ndim - len(spec))
        split = spec[last] or ()
        split = (split,) if isinstance(split, str) else split
        if shape[last] % math.prod(sharding.mesh.shape[a] for a in split):
            return reduce(x, axes, wide)  # the chunks would not split evenly
        out = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(
            *spec[:last + 1], None, *spec[last + 1:]))
    chunks = jax.lax.reshape(x, shape, out_sharding=out)
    return reduce(reduce(chunks, last + 1, narrow), axes, wide)


def size_where(pred: Array, sizes: Array | None) -> Array:
    """Total size (``int32``) of the units where ``pred`` holds (``sizes=None``: 1 each).

    An elementwise select and a sum: on sharded units a local sum and a scalar all-reduce,
    exact whatever the partitioning. Unit counts are first summed in ``int8`` over chunks
    of the last axis (:func:`_chunked_sum`), so counting materialises no weight-sized array.
    """
    if sizes is not None:
        return jnp.sum(jnp.where(pred, sizes, 0), dtype=jnp.int32)
    pred = jnp.asarray(pred)
    if not pred.ndim:
        return pred.astype(jnp.int32)
    return _chunked_sum(pred, tuple(range(pred.ndim)), jnp.int8, jnp.int32)


def _index_cut(pred, shape: tuple[int, ...]) -> Array:
    """The first ``c`` entries in row-major order, as a mask: for the largest ``c`` with
    ``pred(first c)`` true (``pred`` monotone, true for none).

    Bisection over the rows, then over the columns of the boundary row, comparing
    iotas, so no flat-index array is ever materialised (``ndim <= 2``).
    """
    if len(shape) == 1:
        col = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
        c = max_key_where(lambda c: pred(col < c), max(1, int(shape[0]).bit_length()))
        return col < c
    if len(shape) != 2:
        raise ShapeError(f"index order of a {len(shape)}-D array is not supported")
    row = jax.lax.broadcasted_iota(jnp.uint32, shape, 0)
    col = jax.lax.broadcasted_iota(jnp.uint32, shape, 1)
    r = max_key_where(lambda r: pred(row < r), max(1, int(shape[0]).bit_length()))
    c = max_key_where(lambda c: pred((row < r) | ((row == r) & (col < c))),
                      max(1, int(shape[1]).bit_length()))
    return (row < r) | ((row == r) & (col < c))


def _prefix_mask(scores: Array, sizes: Array | None, budget: Array | int) -> Array:
    """Keep the longest prefix of the (score desc, index asc) order whose size fits ``budget``.

    ``scores`` is 1-D or 2-D (its row-major order is the index order); ``sizes`` is ``None``
    (every unit of size 1) or an integer array of the same shape. No sort, no prefix sum and
    no reshape: the boundary key is found by bisection over the scores' ordered bit
    patterns, then the ties at the boundary by bisection over the index (each pass an
    elementwise compare and a sum), so sharded scores are selected where they lie, with
    scalar all-reduces only. The one weight-sized buffer is the ``uint32`` key.
    """
    key = order_key(scores)
    budget = jnp.asarray(budget, jnp.int32)
    # t* = largest key whose ">= t" set overflows the budget (exists unless all fit).
    t = max_key_where(lambda t: size_where(key >= t, sizes) > budget)
    above = key > t
    room = budget - size_where(above, sizes)
    tie = key == t
    # Ties are taken in index order while their cumulative size fits ``room`` (the ties'
    # prefix sum, without the prefix sum); all of them when they all fit.
    first = jax.lax.cond(size_where(tie, sizes) <= room, lambda: jnp.ones(key.shape, bool),
                         lambda: _index_cut(lambda m: size_where(tie & m, sizes) <= room,
                                            key.shape))
    keep = above | (tie & first)
    if sizes is None:  # units of size 1: a positive budget always keeps one
        return jnp.where(key.size <= budget, True, keep)
    valid = sizes > 0
    keep = jnp.where(size_where(valid, sizes) <= budget, valid, keep & valid)
    # A positive budget smaller than the best unit still keeps that unit (a leaf pruned at
    # a sparsity below 1 is never emptied): the first unit in (score desc, index asc) order.
    # (Unit grids with sizes are small: a flat argmax is fine.)
    best = jnp.argmax(jnp.where(valid, key, jnp.uint32(0)).reshape(-1))
    best = (jnp.arange(key.size) == best).reshape(key.shape) & valid
    return jnp.where((budget > 0) & ~jnp.any(keep), best, keep)


def topk_mask(scores: Array, k: Array | int, axis: int | None = None) -> Array:
    """Boolean mask keeping the ``k`` largest scores (over all entries, or along ``axis``).

    ``k`` may be traced; with ``axis`` it may be an array broadcastable against the ranks.
    """
    if axis is None:
        return _prefix_mask(scores, None, k)
    return rank_desc(scores, axis=axis) < k


def budget_mask(scores: Array, sizes: Array, budget: Array | int) -> Array:
    """Keep units in descending score order while their cumulative size stays <= ``budget``.

    ``scores`` and ``sizes`` have one shape (row-major order breaks ties). Units of size 0
    are never kept. The kept units are a prefix of the ranking, so the result is
    deterministic and the kept size lies in ``(budget - max(size), budget]`` whenever enough
    units exist; a positive budget smaller than the best unit keeps that one unit.
    """
    return _prefix_mask(scores, sizes, budget)


def group_rank(scores: Array, m: int) -> Array:
    """Rank (``int32``, 0 = largest) of every entry among the ``m`` consecutive rows of its
    group, per column: the entries of its group that beat it, larger or equal and earlier.

    Pairwise comparisons of ordered keys (``-0.0`` ties ``+0.0``), fused into one reduction:
    no sort and no weight-sized buffer. ``scores.shape[0]`` must be divisible by ``m``.
    """
    rows, cols = scores.shape
    if rows % m:
        raise ShapeError(f"grouped selection needs axis 0 ({rows}) divisible by m={m}")
    g = order_key(scores).reshape(rows // m, m, cols)
    rival, me = g[:, :, None, :], g[:, None, :, :]  # (groups, rival j, entry i, cols)
    j = jax.lax.broadcasted_iota(jnp.int32, (1, m, m, 1), 1)
    i = jax.lax.broadcasted_iota(jnp.int32, (1, m, m, 1), 2)
    beats = jnp.where(j < i, rival >= me, rival > me)
    return jnp.sum(beats, axis=1, dtype=jnp.int32).reshape(rows, cols)


def nm_select(scores: jax.Array, n: int = 2, m: int = 4) -> jax.Array:
    """Boolean N:M mask along axis 0: the ``n`` largest scores of every ``m`` rows, per column.

    Ties are broken towards the lower row index. ``scores.shape[0]`` must be divisible by ``m``.
    """
    if scores.shape[0] % m:
        raise ShapeError(f"N:M selection needs axis 0 ({scores.shape[0]}) divisible by m={m}")
    return group_rank(scores, m) < n


def exact_sum(x: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """Sum of non-negative float32 values over ``axis`` that does not depend on the order
    of the additions (so it is the same on one device and on any sharding of ``x``).

    Every value is written in fixed point below the largest exponent of its reduction
    (an exact max), 35 bits wide, and cut into limbs narrow enough that a ``uint32`` sum of
    all of them cannot overflow; the limb sums are exact integers (on sharded input, local
    sums and an integer all-reduce), and the float32 result is a fixed function of them.
    Relative error: a few float32 ulps (bits more than 2**-34 below the largest value are
    dropped). One fused pass per limb, no weight-sized buffer.
    """
    x = jnp.asarray(x, jnp.float32)
    axes = tuple(range(x.ndim)) if axis is None else (axis,) if isinstance(axis, int) \
        else tuple(axis)
    n = max(1, int(np.prod([x.shape[a] for a in axes], dtype=np.int64)))
    # n * (2**width - 1) < 2**32, and a chunk's partial sum fits 16 bits
    width = int(min(11, 32 - n.bit_length()))
    if width < 1:
        raise ShapeError(f"exact_sum: {n} values per sum is too many (at most 2**31 - 1)")
    frac = 11  # fixed-point bits below the largest value's 24-bit mantissa
    limbs = -(-(24 + frac) // width)
    bits = jax.lax.bitcast_convert_type(jnp.abs(x), jnp.uint32)
    exp = bits >> jnp.uint32(23)
    mant = (bits & jnp.uint32(0x7FFFFF)) | jnp.where(exp > 0, jnp.uint32(1 << 23), 0)
    exp = jnp.maximum(exp, jnp.uint32(1)).astype(jnp.uint8)  # subnormals: exponent 1
    top = jnp.expand_dims(_chunked_sum(exp, axes, jnp.uint8, jnp.int32, jnp.max), axes)
    exp = exp.astype(jnp.int32)
    total = jnp.zeros(jnp.squeeze(top, axes).shape, jnp.float32)
    for j in reversed(range(limbs)):  # fixed order, highest limb first
        r = top - exp + (j * width - frac)  # limb j = bits [r, r + width) of the mantissa
        down = mant >> jnp.clip(r, 0, 31).astype(jnp.uint32)
        up = mant << jnp.clip(-r, 0, 31).astype(jnp.uint32)
        limb = jnp.where(r >= 24, 0, jnp.where(r >= 0, down, up)) & jnp.uint32((1 << width) - 1)
        part = _chunked_sum(limb, axes, jnp.uint16, jnp.uint32).astype(jnp.float32)
        total = total + part * jnp.float32(2.0 ** (j * width))
    shift = jnp.squeeze(top, axes) - (frac + 150)  # in [-160, 93]: two exact factors
    return total * _pow2(shift // 2) * _pow2(shift - shift // 2)


def _pow2(e: Array) -> Array:
    """``2.0 ** e`` in float32 for integer ``e`` in ``[-126, 127]``, exactly (from bits)."""
    return jax.lax.bitcast_convert_type((e + 127) << 23, jnp.float32)


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
