"""The tile layout contract shared by ``tvwjax.formats`` and the kernels, and its decoders.

``y = x @ W`` with ``W`` ``K x N`` in Flax's (in, out) layout; ``G`` is the tile width,
``T`` the number of tiles, ``Kp`` the padded maximum number of kept rows per tile:

* ``rows`` ``(T, Kp)`` int32: the original K index of every compact row of a tile, kept rows
  in increasing order first, padding rows pointing at row 0 (their values are zero);
* ``cols`` ``(T, G)`` int32: the original output column of every tile column, padding columns
  equal to ``N`` (one past the end);
* ``counts`` ``(T,)`` int32: the kept rows ``k_t`` of every tile (rows ``>= k_t`` are padding);
* TW ``values`` ``(T, Kp, G)``: each tile's compact dense block;
* TVW ``values`` ``(T, Kp*n/m, G)`` and ``meta`` ``(T, ceil(Kp*n/m/4), G)`` uint8: each tile's
  compact block N:M-compressed along its compact rows by :mod:`pallas_kernels.nm_codec`
  (the kernel handles 2:4: ``(T, Kp/2, G)`` and ``(T, Kp/8, G)``, ``Kp`` a multiple of 8).

The two decoders here are the one reference of each format: ``tvwjax.formats`` decompresses
with them and the kernels' ``*_reference`` functions compute with them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.nm_codec import PLANES, unpack_plane

Array = jax.Array


def kept_row_index(rows: Array, counts: Array | None, k: int) -> Array:
    """``rows`` as int32 with every padding row (compact row ``>= counts[t]``) set to ``k``.

    ``k`` is one past the last row of ``x``: a gather with ``mode="fill"`` reads it as zero
    and a scatter with ``mode="drop"`` drops it, so padding rows count for nothing whatever
    their values. Without ``counts`` the table is returned as is (padding rows then point
    at row 0 and must hold zero values). Counts are clipped to ``[0, Kp]``.

    >>> kept_row_index(jnp.array([[3, 5, 0], [1, 0, 0]]), jnp.array([2, 1]), 9).tolist()
    [[3, 5, 9], [1, 9, 9]]
    """
    r = jnp.asarray(rows).astype(jnp.int32)
    if counts is None:
        return r
    kp = r.shape[1]
    n_kept = jnp.clip(jnp.asarray(counts).astype(jnp.int32), 0, kp)
    return jnp.where(jnp.arange(kp)[None, :] < n_kept[:, None], r, k)


def tiles_to_dense(values: Array, rows: Array, cols: Array, k: int, n_out: int,
                   counts: Array | None = None) -> Array:
    """The dense ``(K, n_out)`` weight of TW tile data (zeros where pruned).

    Args:
      values: ``(T, Kp, G)`` compact blocks.
      rows: ``(T, Kp)`` original K row of each compact row.
      cols: ``(T, G)`` original output column of each tile column; padding columns
        (``== n_out``) are dropped.
      k: ``K``, rows of the weight.
      n_out: ``N``, columns of the weight.
      counts: optional ``(T,)`` kept rows per tile. With it padding rows are dropped
        whatever their values (and get no gradient); without it they must hold zeros
        (they point at row 0 and are added).

    Returns:
      ``(K, n_out)`` in the dtype of ``values``.
    """
    r = kept_row_index(rows, counts, k)
    c = jnp.asarray(cols).astype(jnp.int32)[:, None, :]
    dense = jnp.zeros((k, n_out), values.dtype)
    return dense.at[r[:, :, None], c].add(values, mode="drop")


def tvw_compact_blocks(values: Array, meta: Array, n: int = 2, m: int = 4) -> Array:
    """Decode TVW tile values into the compact dense blocks ``(T, Kp, G)``.

    Elementwise ops only (no transposes, no gathers): the planes of ``meta`` are unpacked
    with :func:`pallas_kernels.nm_codec.unpack_plane` and each of the ``m`` positions of a
    group is a sum of ``n`` selects. Linear in ``values``, so its VJP maps a gradient of the
    compact blocks back to the compressed values.

    Args:
      values: ``(T, V, G)`` N:M-compressed compact blocks (``V = Kp * n / m``).
      meta: ``(T, ceil(V / 4), G)`` uint8 packed positions.
      n, m: the N:M pattern along the compact rows (``m <= 4``).

    Returns:
      ``(T, V / n * m, G)`` in the dtype of ``values``.
    """
    t, vr, g = values.shape
    idx = jnp.stack([unpack_plane(meta, i) for i in range(PLANES)], axis=2)
    idx = idx.reshape(t, -1, g)[:, :vr].reshape(t, vr // n, n, g)
    v = values.reshape(t, vr // n, n, g)
    zero = jnp.zeros((), v.dtype)
    slots = []
    for p in range(m):
        hit = [jnp.where(idx[:, :, j] == p, v[:, :, j], zero) for j in range(n)]
        slots.append(functools.reduce(jnp.add, hit))
    return jnp.stack(slots, axis=2).reshape(t, vr // n * m, g)


__all__ = ["kept_row_index", "tiles_to_dense", "tvw_compact_blocks"]
