"""Column tiling of tile-wise patterns.

A TW mask groups the output columns that survive column pruning, in their original order,
into tiles of ``tile`` columns (the last tile may be narrower). With no column pruning this
is the plain partition into consecutive tiles. These helpers compute that assignment on
arrays (jit-able) and are shared by the mask builders and the compressed formats.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def num_tiles(n: int, tile: int) -> int:
    """Number of tiles of width ``tile`` needed for ``n`` columns."""
    return -(-n // tile)


def column_tiles(col_keep: Array, tile: int) -> tuple[Array, Array]:
    """Tile id of every column and the width of every tile.

    Args:
      col_keep: ``(N,)`` bool, the columns that survive column pruning.
      tile: tile width ``G``.

    Returns:
      ``tile_id`` ``(N,)`` int32: the tile of each kept column, ``T`` (one past the last tile)
      for pruned columns; ``width`` ``(T,)`` int32: the number of columns in each tile, with
      ``T = ceil(N / tile)`` (trailing tiles may be empty when columns were pruned).
    """
    n = col_keep.shape[0]
    t = num_tiles(n, tile)
    pos = jnp.cumsum(col_keep.astype(jnp.int32)) - 1
    tile_id = jnp.where(col_keep, pos // tile, t).astype(jnp.int32)
    kept = jnp.sum(col_keep.astype(jnp.int32))
    starts = jnp.arange(t, dtype=jnp.int32) * tile
    width = jnp.clip(kept - starts, 0, tile).astype(jnp.int32)
    return tile_id, width


def segment_sumsq(scores: Array, tile_id: Array, n_tiles: int) -> Array:
    """Sum of squared scores of every row segment: ``(K, T)`` from ``(K, N)`` scores."""
    sq = jnp.square(scores.astype(jnp.float32)).T  # (N, K)
    seg = jax.ops.segment_sum(sq, tile_id, num_segments=n_tiles + 1)  # (T+1, K)
    return seg[:n_tiles].T
